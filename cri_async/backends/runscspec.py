"""The pure half of the gVisor backend: runsc's quirks as data and functions (see
``cri_async.backends.runsc`` for how they fit together)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from cri_async.backends.runsclimits import UNKNOWN_CAPS
from cri_async.core.model import NamespaceMode
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


MASK_FILE = "masked"
"""In a container's bundle: an empty read-only file bound over each masked file path."""
PIDNS_TOKEN = "pidns"
"""A container's PID namespace "path": runsc matches these by name to let a container join
another's (PID mode TARGET); nothing is opened there."""

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


def adjust_container_spec(
    spec: dict[str, Any],
    sandbox_id: str,
    *,
    pid_mode: NamespaceMode,
    pidns_token: str,
    target_token: str | None,
    kinds: Mapping[str, str],
    mask_file: str,
) -> list[str]:
    """Make a container's config.json what runsc needs for what was asked, in place; one
    note per change. The caller refused what gVisor cannot do (``runsclimits``).

    PID namespaces: runsc puts a container without a pid namespace entry into the
    sandbox's root one (whose init is the infra pause: mode POD), one with a path it has
    not seen into a new one (CONTAINER), one with the path of another's into that one's
    (TARGET). Masked and read-only paths: runsc ignores ``maskedPaths`` and
    ``readonlyPaths``, so they become mounts (an empty read-only file or a read-only tmpfs
    over a masked file or directory, a read-only bind of the rootfs's own directory);
    ``kinds`` says what each path is in the rootfs ("dir", "file" or absent). Paths under
    /proc and /sys are gVisor's own synthetic files, which show nothing of the host's.
    """
    notes: list[str] = []
    linux = spec.setdefault("linux", {})
    if linux.get("sysctl"):
        raise ValueError("sysctls reached the runsc spec; runsclimits refuses them")
    process = spec.get("process") or {}
    caps = process.get("capabilities") or {}
    dropped: set[str] = set()
    for kind, names in list(caps.items()):
        if isinstance(names, list):
            dropped.update(n for n in names if n in UNKNOWN_CAPS)
            caps[kind] = [n for n in names if n not in UNKNOWN_CAPS]
    if dropped:
        notes.append(f"all capabilities: without those runsc does not know: {sorted(dropped)}")
    oom = process.get("oomScoreAdj")
    if isinstance(oom, int) and oom < 0:
        process["oomScoreAdj"] = 0
        notes.append(f"oomScoreAdj {oom} raised to 0")
    namespaces = [n for n in linux.get("namespaces") or [] if n.get("type") != "pid"]
    if pid_mode is NamespaceMode.CONTAINER:
        namespaces.append({"type": "pid", "path": pidns_token})
    elif pid_mode is NamespaceMode.TARGET:
        assert target_token is not None
        namespaces.append({"type": "pid", "path": target_token})
    linux["namespaces"] = namespaces
    mounts = spec.setdefault("mounts", [])
    for m in mounts:  # gVisor's read-only binds are recursive; it knows no "rro"
        options = m.get("options") or []
        if "rro" in options:
            m["options"] = [o for o in options if o != "rro"] + (
                ["ro"] if "ro" not in options else []
            )
    rootfs = str((spec.get("root") or {}).get("path") or "")
    for path in linux.pop("maskedPaths", None) or []:
        kind = kinds.get(path)
        if _synthetic(path) or kind is None:
            continue
        if kind == "dir":
            mounts.append(_tmpfs_ro(path))
        else:
            mounts.append(_bind_ro(path, mask_file))
        notes.append(f"masked path {path} as a mount")
    for path in linux.pop("readonlyPaths", None) or []:
        if _synthetic(path) or kinds.get(path) is None:
            continue
        mounts.append(_bind_ro(path, rootfs.rstrip("/") + path))
        notes.append(f"read-only path {path} as a mount")
    annotations = spec.setdefault("annotations", {})
    annotations[oci.ANNOTATION_CONTAINER_TYPE] = "container"
    annotations[oci.ANNOTATION_SANDBOX_ID] = sandbox_id
    return notes


def hidden_paths(spec: dict[str, Any]) -> list[str]:
    """The masked and read-only paths the spec names that ``adjust_container_spec`` turns
    into mounts (the caller looks up what each is in the rootfs)."""
    linux = spec.get("linux") or {}
    paths = [*(linux.get("maskedPaths") or []), *(linux.get("readonlyPaths") or [])]
    return [p for p in paths if isinstance(p, str) and not _synthetic(p)]


def _synthetic(path: str) -> bool:
    return path in ("/proc", "/sys") or path.startswith(("/proc/", "/sys/"))


def _bind_ro(destination: str, source: str) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }


def _tmpfs_ro(destination: str) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["ro", "nosuid", "nodev", "noexec", "size=0"],
    }


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
