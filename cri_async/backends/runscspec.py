"""The pure half of the gVisor backend: runsc's quirks as data and functions (see
``cri_async.backends.runsc`` for how they fit together)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from cri_async.core.model import Sandbox
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

INFRA_UID = 65535
"""The infra process runs as this user with no capabilities (as the pause image does)."""

_INFRA_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("catatonit", ("-P",)),
    ("/usr/libexec/podman/catatonit", ("-P",)),
    ("busybox", ("sleep", "2147483647")),
)
INFRA_DIRS = ("dev", "proc", "sys", "etc", "tmp")
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


def _is_static_elf(path: str) -> bool:
    """A 64-bit little-endian ELF executable without a program interpreter."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return False
            phoff = struct.unpack_from("<Q", head, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        if len(table) < (i + 1) * phentsize:
            return False
        if struct.unpack_from("<I", table, i * phentsize)[0] == 3:  # PT_INTERP
            return False
    return True


def find_infra_binary(wanted: str = "") -> tuple[str, tuple[str, ...]] | None:
    """(host path, argv in the infra rootfs) of the static pause binary, or None.

    The binary sits in the infra rootfs under its own name (busybox picks its applet by
    that). ``wanted`` (a path or name) replaces the search; it gets catatonit's ``-P``
    unless it is a busybox.
    """
    candidates = _INFRA_CANDIDATES
    if wanted:
        args: tuple[str, ...] = (
            ("sleep", "2147483647") if "busybox" in os.path.basename(wanted) else ("-P",)
        )
        candidates = ((wanted, args),)
    for name, args in candidates:
        path = shutil.which(name)
        real = os.path.realpath(path) if path else ""
        if real and _is_static_elf(real):
            return real, (f"/{os.path.basename(real)}", *args)
    return None


def infra_spec(
    sandbox: Sandbox,
    *,
    rootfs: str,
    args: Sequence[str],
    netns: str | None,
    hostname: str,
    cgroups_path: str,
    oom_score_adj: int,
) -> dict[str, Any]:
    """config.json of the pod's infra container (the gVisor sandbox itself); ``args`` is
    the pause binary's argv in ``rootfs``."""
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if netns:
        namespaces.append({"type": "network", "path": netns})
    m = sandbox.metadata
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": INFRA_UID, "gid": INFRA_UID},
            "args": list(args),
            "env": ["PATH=/"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": True,
            "oomScoreAdj": max(0, oom_score_adj),
        },
        "root": {"path": rootfs, "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "annotations": {
            **sandbox.config.annotations,
            oci.ANNOTATION_CONTAINER_TYPE: "sandbox",
            oci.ANNOTATION_SANDBOX_ID: sandbox.id,
            oci.ANNOTATION_SANDBOX_NAME: m.name,
            oci.ANNOTATION_SANDBOX_NAMESPACE: m.namespace,
            oci.ANNOTATION_SANDBOX_UID: m.uid,
        },
        "linux": {"cgroupsPath": cgroups_path, "namespaces": namespaces},
    }
    if hostname:
        spec["hostname"] = hostname
    return spec


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
