"""The infra container of pods whose runtime keeps the pod's processes in a sandbox of its
own (gVisor's runsc; Kata and gVisor through their containerd shims): a read-only rootfs
holding one static pause binary (Debian's ``catatonit -P``, or busybox-static ``sleep``),
run with the annotations ``io.kubernetes.cri.container-type=sandbox`` and
``io.kubernetes.cri.sandbox-id=<pod id>`` before any container of the pod. No image is
pulled for it: the rootfs is made once per handler from the host's binary.
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cri_async.core.model import Sandbox
from cri_async.oci import spec as oci
from cri_async.oci.defaults import DEFAULT_CAPABILITIES

__all__ = ["INFRA_DIRS", "INFRA_UID", "find_infra_binary", "infra_spec", "install_rootfs"]

INFRA_UID = 65535
"""The infra process runs as this user with no capabilities (as the pause image does)."""

_INFRA_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("catatonit", ("-P",)),
    ("/usr/libexec/podman/catatonit", ("-P",)),
    ("busybox", ("sleep", "2147483647")),
)
INFRA_DIRS = ("dev", "proc", "sys", "etc", "tmp")


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
    bounding_caps: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """config.json of the pod's infra container (for runsc the gVisor sandbox itself); ``args``
    is the pause binary's argv in ``rootfs``.

    With ``bounding_caps`` (ours) its capabilities are a container's default set within
    them: runsc's host network passthrough gives the sandbox process the infra container's
    capabilities on the host (``--apply-caps``), and the pod's sockets are the sandbox's, so
    without CAP_NET_BIND_SERVICE no container of the pod could listen on port 80. Without,
    it has none (the pause process needs none)."""
    caps = [c for c in DEFAULT_CAPABILITIES if c in bounding_caps]
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
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
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


def install_rootfs(rootfs: Path, binary: str) -> None:
    """Make (or refresh) the infra rootfs: its directories and a copy of the pause binary
    under its own name, replaced atomically when the host's binary changed."""
    for name in INFRA_DIRS:
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    target = rootfs / os.path.basename(binary)
    src = os.stat(binary)
    try:
        cur = target.stat()
        same = cur.st_size == src.st_size and int(cur.st_mtime) == int(src.st_mtime)
    except FileNotFoundError:
        same = False
    if not same:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        shutil.copy2(binary, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
