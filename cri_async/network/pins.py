"""Pause-less pods: the pod's net/ipc/uts namespaces pinned by bind mounts.

A dedicated short-lived thread unshares the namespaces, sets the hostname, brings up
loopback and bind-mounts them onto files under ``<run_root>/ns``, with no program to exec;
containers join them by path (an ``unshare`` exec costs ~2.4 ms, a runc pause container
~29 ms to start and ~107 ms to delete). The pin directory is a private bind mount of
itself, so pins never propagate to other mount namespaces even when / is made rshared.

A PID namespace cannot outlive its init process, so a pod whose containers share one
(``pid: POD``) gets the one process such pods need: a pause program (``catatonit -P``)
spawned by the same thread as the new namespace's init, in the pod's other namespaces.

A pod in a user namespace of its own (``userns_options`` mode POD) gets it pinned too, and
its other namespaces are created inside it (owned by it, so that root in its containers may
mount sysfs and proc and configure its network). Only a single-threaded process can create
a user namespace, so for such pods a short-lived child program (``usernschild.py``) makes
them; this process writes the child's uid/gid maps and pins what it made (~25 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from cri_async import linux, proc
from cri_async.core.model import IDMapping, UserNamespace
from cri_async.network.netns import in_fresh_thread

KINDS = ("net", "ipc", "uts", "pid", "user")
CHILD = Path(__file__).with_name("usernschild.py")
CHILD_TIMEOUT = 30.0


class PinError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Pins:
    net: str | None
    ipc: str | None
    uts: str | None
    pid: str | None = None
    pause_pid: int = 0
    """The host pid of the pod's PID namespace init (0: no shared PID namespace)."""
    user: str | None = None


_CLONE = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000, "pid": 0x20000000}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def _spawn_init(argv: list[str]) -> int:
    """Spawn ``argv`` as the init of this thread's new PID namespace, in its own session
    with no stdio."""
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    return os.posix_spawn(
        argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, file_actions=devnull, setsid=True
    )


def _unshare_and_pin(files: dict[str, Path], hostname: str, pause: list[str] | None) -> int:
    """In the calling (dedicated) thread: new namespaces, hostname, loopback up, bind them
    onto ``files``, with ``pause`` spawned as the init of a new PID namespace; then back to
    the original namespaces. Namespaces are per thread, so the rest of the process never
    sees this. Returns the pause process's pid (0: none)."""
    if not files:
        return 0
    # The thread's PID namespace itself never changes (only its children's).
    originals = {k: os.open(f"/proc/thread-self/ns/{k}", os.O_RDONLY) for k in files if k != "pid"}
    pause_pid = 0
    try:
        flags = 0
        for k in files:
            flags |= _CLONE[k]
        if _libc.unshare(flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare: {os.strerror(err)}")
        if "uts" in files:
            socket.sethostname(hostname)
        if "net" in files:
            _loopback_up()
        if "pid" in files:
            assert pause is not None
            pause_pid = _spawn_init(pause)
        for k, f in files.items():
            src = f"/proc/{pause_pid}/ns/pid" if k == "pid" else f"/proc/thread-self/ns/{k}"
            linux.mount(src, str(f), None, linux.MS_BIND)
    except BaseException:
        if pause_pid:
            os.kill(pause_pid, 9)
        raise
    finally:
        for k, fd in originals.items():
            _libc.setns(fd, _CLONE[k])
            os.close(fd)
    return pause_pid


async def _expect(child: asyncio.subprocess.Process, word: str) -> list[str]:
    """The words after ``word`` on the child's next line; OSError if it says otherwise."""
    assert child.stdout is not None
    assert child.stderr is not None
    line = (await child.stdout.readline()).decode(errors="replace").split()
    if line[:1] == [word]:
        return line[1:]
    why = " ".join(line[1:]) if line[:1] == ["error"] else ""
    if not why:
        await child.wait()
        why = (await child.stderr.read()).decode(errors="replace").strip()[-500:]
    raise OSError(f"the user namespace helper failed: {why or 'no output'}")


def _map_text(maps: tuple[IDMapping, ...]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in maps)


def _write_maps(pid: int, userns: UserNamespace) -> None:
    # As root in the parent user namespace any mapping may be written, and setgroups(2)
    # stays allowed (containers set their supplementary groups).
    Path(f"/proc/{pid}/uid_map").write_text(_map_text(userns.uids))
    Path(f"/proc/{pid}/gid_map").write_text(_map_text(userns.gids))


def _bind_namespaces(files: dict[str, Path], child: int, pause_pid: int) -> None:
    for k, f in files.items():
        src = f"/proc/{pause_pid}/ns/pid" if k == "pid" else f"/proc/{child}/ns/{k}"
        linux.mount(src, str(f), None, linux.MS_BIND)


def _private_root(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if not linux.is_mountpoint(str(root)):
        linux.mount(str(root), str(root), None, linux.MS_BIND)
    linux.mount("none", str(root), None, linux.MS_PRIVATE)


class NamespacePinner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._ready = False

    async def _prepare(self) -> None:
        if not self._ready:
            await asyncio.to_thread(_private_root, self.root)
            for k in KINDS:
                (self.root / k).mkdir(exist_ok=True)
            self._ready = True

    def path(self, kind: str, sandbox_id: str) -> Path:
        return self.root / kind / sandbox_id

    async def pin(
        self,
        sandbox_id: str,
        hostname: str,
        *,
        net: bool,
        ipc: bool,
        uts: bool,
        pause: list[str] | None = None,
        userns: UserNamespace | None = None,
    ) -> Pins:
        """Pin new namespaces for a pod; ``pause`` (an absolute argv) also gives it a shared
        PID namespace with that program as its init, which the caller must reap; ``userns``
        (mode POD, mappings checked) a user namespace owning the others."""
        await self._prepare()
        want = {"net": net, "ipc": ipc, "uts": uts, "pid": pause is not None}
        files = {k: self.path(k, sandbox_id) for k, on in want.items() if on}
        if userns is not None:
            files["user"] = self.path("user", sandbox_id)
        for f in files.values():
            f.touch()
        if userns is not None:
            try:
                pause_pid = await self._pin_in_userns(files, hostname or "pod", pause, userns)
            except (OSError, TimeoutError) as e:
                await self.unpin(sandbox_id)
                raise PinError(f"cannot create pod namespaces: {e}") from None
            return self._pins(files, pause_pid)
        # A fresh thread, never a pooled one: it leaves its namespaces and then ends, so no
        # other work can ever run inside a pod's namespaces.
        work = asyncio.ensure_future(
            in_fresh_thread(
                lambda: _unshare_and_pin(files, hostname or "pod", pause),
                name=f"pin-{sandbox_id[:12]}",
            )
        )
        try:
            pause_pid = await asyncio.shield(work)
        except OSError as e:
            await self.unpin(sandbox_id)
            raise PinError(f"cannot create pod namespaces: {e}") from None
        return self._pins(files, pause_pid)

    @staticmethod
    def _pins(files: dict[str, Path], pause_pid: int) -> Pins:
        paths = {k: str(f) for k, f in files.items()}
        return Pins(
            paths.get("net"),
            paths.get("ipc"),
            paths.get("uts"),
            paths.get("pid"),
            pause_pid,
            paths.get("user"),
        )

    async def _pin_in_userns(
        self,
        files: dict[str, Path],
        hostname: str,
        pause: list[str] | None,
        userns: UserNamespace,
    ) -> int:
        """Run the child that makes the namespaces (see the module's notes); bind-mount
        them onto ``files``. Returns the pause process's pid (0: none)."""
        kinds = ",".join(k for k in ("net", "ipc", "uts", "pid") if k in files)
        argv = [sys.executable, "-I", "-S", str(CHILD), hostname, kinds, *(pause or [])]
        pause_pid = 0
        async with asyncio.timeout(CHILD_TIMEOUT), proc.started(argv, stdin=proc.PIPE) as child:
            assert child.stdin is not None
            try:
                await _expect(child, "user")
                await asyncio.to_thread(_write_maps, child.pid, userns)
                child.stdin.write(b"mapped\n")
                await child.stdin.drain()
                pause_pid = int((await _expect(child, "ready"))[0])
                await asyncio.to_thread(_bind_namespaces, files, child.pid, pause_pid)
            except BaseException:
                if pause_pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pause_pid, 9)
                raise
            child.stdin.close()
            await child.wait()
        return pause_pid

    async def unpin(self, sandbox_id: str) -> None:
        """Idempotent: unmount and remove whatever pins exist for the sandbox."""

        def run() -> None:
            for kind in KINDS:
                f = self.path(kind, sandbox_id)
                linux.umount(str(f))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)

        await asyncio.to_thread(run)

    def pinned(self) -> set[str]:
        """Sandbox ids that have any pin file (for startup reconciliation)."""
        out: set[str] = set()
        for kind in KINDS:
            d = self.root / kind
            if d.is_dir():
                out.update(p.name for p in d.iterdir())
        return out
