"""runsc's side of a container's life outside the sandbox: the CLI's quirks, the start
FIFOs the holder waits on (see ``cri_async.backends.runsc``), the host reads and files a
container's spec needs for runsc, and reading why a sandbox died."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from cri_async import files, linux, waits
from cri_async.backends.ocicli import RuntimeCLI
from cri_async.backends.runscspec import (
    MASK_FILE,
    PIDNS_TOKEN,
    START_FIFO,
    START_LOG,
    STARTED_FIFO,
    adjust_container_spec,
    hidden_paths,
)
from cri_async.cgroupfs import CGROUP_ROOT
from cri_async.core.model import Container
from cri_async.core.ports import StartError


class RunscCLI(RuntimeCLI):
    """runsc keeps a container's state in ``ROOT/<cid>_sandbox:<sandbox>.state`` files, not
    in a ``ROOT/<cid>`` directory; an unknown container fails with exit 128."""

    def _known(self, cid: str) -> bool:
        try:
            names = os.listdir(self.root)
        except OSError:
            return False
        prefix = f"{cid}_sandbox:"
        return any(n.startswith(prefix) and n.endswith(".state") for n in names)

    async def kill_pid(self, cid: str, pid: int, signal: int) -> None:
        """Signal one process of ``cid`` by its pid in the sandbox's root pid namespace."""
        await self._run("kill", "--pid", str(pid), cid, str(int(signal)), check=False)


def adjust_spec(
    spec: dict[str, Any],
    bundle: Path,
    sandbox_id: str,
    container: Container,
    target_bundle: Path | None,
) -> list[str]:
    """With the container's rootfs mounted (in a worker thread): what each masked or
    read-only path is there, the empty file masked files get, then the pure
    ``adjust_container_spec``; its notes."""
    kinds = {p: k for p in hidden_paths(spec) if (k := _kind_in_root(spec["root"]["path"], p))}
    mask = bundle / MASK_FILE
    mask.touch(mode=0o444)
    return adjust_container_spec(
        spec,
        sandbox_id,
        pid_mode=container.config.security.namespaces.pid,
        pidns_token=str(bundle / PIDNS_TOKEN),
        target_token=str(target_bundle / PIDNS_TOKEN) if target_bundle is not None else None,
        kinds=kinds,
        mask_file=str(mask),
    )


def _kind_in_root(rootfs: str, path: str) -> str | None:
    """ "dir" or "file" for what ``path`` is in the rootfs (symlinks resolved inside it, as
    the runtime resolves a mount destination), None when there is nothing."""
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = linux.openat2(root, path.lstrip("/"), os.O_PATH, linux.RESOLVE_IN_ROOT)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        return "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
    finally:
        os.close(fd)


def has_seccomp(bundle: Path) -> bool:
    """Whether the container's spec carries a seccomp profile."""
    spec = json.loads((bundle / "config.json").read_text())
    return bool((spec.get("linux") or {}).get("seccomp"))


def make_fifos(bundle: Path) -> None:
    for name in (START_FIFO, STARTED_FIFO):
        path = bundle / name
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)
    (bundle / START_LOG).unlink(missing_ok=True)


async def signal_start(bundle: Path, holder: int) -> int:
    """Tell the holder to run ``runsc start``; its exit code (255: the holder is gone)."""
    flags = os.O_NONBLOCK | os.O_CLOEXEC
    try:
        rfd = os.open(bundle / STARTED_FIFO, os.O_RDWR | flags)
    except FileNotFoundError:
        raise StartError("the container's bundle has no start FIFO") from None
    pidfd: int | None = None
    try:
        try:
            wfd = os.open(bundle / START_FIFO, os.O_WRONLY | flags)
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                raise
            raise StartError("the container's start helper is gone") from None
        try:
            os.write(wfd, b"start\n")
        finally:
            os.close(wfd)
        if holder > 0:
            pidfd = waits.pidfd(holder)
        buf = b""
        while b"\n" not in buf:
            ready = await waits.wait_readable([rfd] if pidfd is None else [rfd, pidfd], None)
            # What the holder wrote before it exited is in the FIFO by now.
            with contextlib.suppress(BlockingIOError):
                buf += os.read(rfd, 64)
            if pidfd is not None and pidfd in ready and b"\n" not in buf:
                raise StartError("the container's start helper exited without starting it")
        text = buf.split(b"\n", 1)[0].strip()
        return int(text) if text.isdigit() else 255
    finally:
        os.close(rfd)
        if pidfd is not None:
            os.close(pidfd)


def sandbox_oom_killed(bundle: Path, sandbox_id: str) -> bool:
    """Whether the v1 memory cgroup of the pod's sandbox (next to the container's own)
    recorded an OOM kill."""
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return False
    cgroup = str((spec.get("linux") or {}).get("cgroupsPath") or "")
    if not cgroup:
        return False
    parent = os.path.dirname(cgroup.rstrip("/")).strip("/")
    text = files.read_text(CGROUP_ROOT / "memory" / parent / sandbox_id / "memory.oom_control")
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value) > 0
    return False
