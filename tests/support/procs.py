"""What tests look up about processes in /proc: who mentions a string on its command line
(leftover checks), a process's state, whether it has a handler for a signal yet, and how
many descriptors this process holds (leak checks)."""

from __future__ import annotations

import os
from pathlib import Path


def processes_mentioning(needle: str) -> dict[int, str]:
    """pid -> command line of every process but this one whose command line contains
    ``needle`` (like ``pgrep -af``, without procps)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z, ...), or None once it is gone (reaped)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has installed a handler for ``signum`` (its SigCgt mask), e.g. a
    shell that has run its ``trap``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False
