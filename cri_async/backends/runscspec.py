"""The pure half of the gVisor backend: runsc's quirks as data and functions (see
``cri_async.backends.runsc`` for how they fit together)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from cri_async.oci import spec as oci

NETWORK_MODES = ("host", "sandbox", "none")

START_FIFO = "start"
"""In a container's bundle: the holder reads a line from it, then runs ``runsc start``."""
STARTED_FIFO = "started"
"""In a container's bundle: the holder writes ``runsc start``'s exit code to it."""
START_LOG = "start.log"
"""In a container's bundle: ``runsc start``'s error messages (``--log``, JSON lines)."""
WAIT_LOG = "wait.log"
"""In a container's bundle: why ``runsc wait`` failed (the sandbox died under the container);
the holder then exits 255."""
INTERNAL_PID = "internal.pid"
"""In an exec's work dir: if present, the wrapper asks runsc to write the exec'd process's
pid in the sandbox's root pid namespace there (``runsc kill --pid`` takes that pid)."""
HOLD_FLAG = "--cri-async-hold"

# Capabilities newer than this runsc (0.0~20221219): a spec naming one fails at start.
UNKNOWN_CAPS = frozenset({"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})

STOP_WAIT = 5.0
"""Seconds to wait for a killed sandbox (or a holder's conmon) to exit."""


def wrapper_script(runsc: str, global_args: Sequence[str]) -> str:
    """The script conmon runs as its OCI runtime (``-r``) for this handler.

    ``global_args`` are the runsc flags every command gets (``--root=...`` included); conmon
    passes them too, the holder needs them for its own ``start`` and ``wait``.
    """
    text = resources.files("cri_async.backends").joinpath("runsc-wrapper.sh").read_text()
    values = {
        "RUNSC": shlex.quote(runsc),
        "FLAGS": " ".join(shlex.quote(a) for a in global_args),
        "HOLD_FLAG": HOLD_FLAG,
        "START_FIFO": START_FIFO,
        "STARTED_FIFO": STARTED_FIFO,
        "START_LOG": START_LOG,
        "WAIT_LOG": WAIT_LOG,
        "INTERNAL_PID": INTERNAL_PID,
    }
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def adjust_container_spec(spec: dict[str, Any], sandbox_id: str) -> list[str]:
    """Make a container's config.json acceptable to runsc, in place; one note per change."""
    notes: list[str] = []
    linux = spec.setdefault("linux", {})
    sysctls = linux.pop("sysctl", None)
    if sysctls:
        notes.append(f"sysctls not applied by runsc, dropped: {', '.join(sorted(sysctls))}")
    process = spec.get("process") or {}
    caps = process.get("capabilities") or {}
    dropped: set[str] = set()
    for kind, names in list(caps.items()):
        if isinstance(names, list):
            dropped.update(n for n in names if n in UNKNOWN_CAPS)
            caps[kind] = [n for n in names if n not in UNKNOWN_CAPS]
    if dropped:
        notes.append(f"capabilities unknown to runsc, dropped: {', '.join(sorted(dropped))}")
    oom = process.get("oomScoreAdj")
    if isinstance(oom, int) and oom < 0:
        process["oomScoreAdj"] = 0
        notes.append(f"oomScoreAdj {oom} raised to 0")
    annotations = spec.setdefault("annotations", {})
    annotations[oci.ANNOTATION_CONTAINER_TYPE] = "container"
    annotations[oci.ANNOTATION_SANDBOX_ID] = sandbox_id
    return notes


def start_log_message(path: Path) -> str:
    """The messages of runsc's ``--log`` file (JSON lines ``{"msg": ..., "level": ...}``)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    msgs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            msgs.append(line)
            continue
        if isinstance(rec, dict) and rec.get("msg"):
            msgs.append(str(rec["msg"]))
    return "; ".join(msgs)[-2000:]


def cmdline_has(pid: int, *needles: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return all(n in cmdline for n in needles)
