"""Host helpers shared by the benchmarks: process CPU, mounts, processes, cgroups."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile, linearly interpolated between closest ranks (numpy's default)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pdeathsig() -> Callable[[], None] | None:
    """Make a child die with us even if we are SIGKILLed (main thread only)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sig = int(signal.SIGKILL)

    def hook() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return hook


@dataclass(frozen=True)
class CPU:
    """utime+stime of a process, and of the children it has reaped, in seconds."""

    self_s: float
    children_s: float

    def __sub__(self, o: CPU) -> CPU:
        return CPU(self.self_s - o.self_s, self.children_s - o.children_s)


def proc_cpu(pid: int) -> CPU:
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2 :].split()  # f[0] is field 3 of proc(5)
    ut, st, cut, cst = (int(x) for x in f[11:15])  # fields 14-17
    return CPU((ut + st) / CLK_TCK, (cut + cst) / CLK_TCK)


def mounts_under(*paths: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        for p in paths:
            if mp == str(p) or mp.startswith(str(p).rstrip("/") + "/"):
                out.append(mp)
                break
    return out


def processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every process other than us whose command line contains needle."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append((int(d.name), cmd.strip()))
    return found


def cgroup_dirs(rel: str) -> list[Path]:
    """``rel`` in every mounted hierarchy where it exists."""
    hier = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]
    return [h / rel for h in hier if (h / rel).is_dir()]


def rmdir_cgroup_tree(rel: str) -> list[str]:
    """rmdir ``rel`` and its sub-cgroups (deepest first) in every hierarchy; returns what
    could not be removed (still holding processes)."""
    left = []
    for top in cgroup_dirs(rel):
        subdirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for d in subdirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                left.append(f"{d}: {e.strerror}")
    return left


def cmd_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"
