"""One conmon per container: create through conmon, exit files, exec-sync, the ctl fifo.

Protocol facts (tested with conmon 2.1.6, runc 1.1.5 and crun 1.8.1):

* conmon gets two inherited pipe fds named by ``_OCI_SYNCPIPE`` (conmon writes JSON to us) and
  ``_OCI_STARTPIPE`` (conmon blocks until we write a byte, so it can be moved into a cgroup
  before it forks anything).
* Without ``--sync`` conmon double-forks: the direct child exits at once (we collect it); the
  long-lived process is re-parented (to us as a subreaper, see ``reaper``). The sync pipe then
  carries ``{"pid": N}`` (the container's pid) or ``{"pid": -1, "message": ...}``.
* conmon only runs the runtime's ``create``; ``start`` is ours.
* When the container exits conmon writes the exit code (128+N for signal N) to
  ``EXIT_DIR/CID`` and to ``PERSIST_DIR/exit`` (the bundle here), and ``PERSIST_DIR/oom`` if
  the v1 memory cgroup reported an OOM kill.
* exec-sync (``-e --sync``): conmon stays our child and ends with ``{"exit_code": N}`` on the
  sync pipe, or ``{"exit_code": -1, "message": ...}`` when the runtime failed or ``-T`` fired
  ("command timed out"). The output is a CRI-format log file.
* ``BUNDLE/ctl`` takes ``"1 ROWS COLS\\n"`` (resize) and ``"2 0 0\\n"`` (reopen the log).
  conmon acts on it in its own main loop, after our write returned: it closes the log,
  opens ``LOG.tmp`` (truncating) and renames it over ``LOG``. A reopen is done only once a
  file other than the one there before stands at ``LOG``.
* The attach socket is bound at ``SOCKET_DIR/CID/attach`` through a symlink ``SOCKET_DIR/CID``
  to the bundle, so that path has to fit ``sun_path`` (107 bytes plus NUL). Streaming
  sessions connect to it (``attach``) or run an exec under a conmon of their own
  (``exec_attach``, see ``execattach``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import math
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async import cgroupfs, files, waits
from cri_async.logs.crilog import EXEC_SYNC_OUTPUT_LIMIT
from cri_async.monitor import execattach, execsync, syncpipe
from cri_async.monitor.attach import AttachSocket, ConmonSession, write_ctl
from cri_async.monitor.execattach import ExecAttach, SessionFiles
from cri_async.monitor.execsync import ExecOutcome
from cri_async.monitor.reaper import Reaper
from cri_async.observe import NO_OBSERVER, Observer
from cri_async.oci.errors import runtime_message

__all__ = ["SUN_PATH_MAX", "Conmon", "ConmonError", "ExecOutcome", "ExitInfo"]

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107
"""Longest AF_UNIX path in bytes (``sun_path`` is 108 bytes including the NUL)."""

_SYNC_LINE_MAX = 1 << 20
_EXEC_BACKSTOP = 5
"""Seconds after our own exec timeout that conmon's ``-T`` fires, should ours not work."""
_STDERR_KEEP = 2000
_BUNDLE_RUN_FILES = ("exit", "oom", "pidfile", "conmon.pid")


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class ExitInfo:
    exit_code: int
    finished_at: int
    """Unix ns: the exit file's mtime (conmon writes it 1.5-2 ms after the exit)."""
    oom: bool


class ConmonError(Exception):
    """conmon or the runtime under it failed; the message carries the runtime's words."""


class Conmon:
    """Runs conmon for the containers of one runtime (``runtime``'s binary and root)."""

    def __init__(
        self,
        conmon: str,
        *,
        runtime_path: str,
        runtime_args: Sequence[str],
        socket_dir: str,
        log_level: str = "info",
        reaper: Reaper | None = None,
        create_timeout: float = 120.0,
        observer: Observer = NO_OBSERVER,
        backend: str = "",
    ) -> None:
        self.conmon = conmon
        self.observer = observer
        self.backend = backend
        """The handler's runtime name, the ``backend`` label of conmon invocation metrics."""
        self.runtime_path = runtime_path
        """What conmon executes as the runtime (``-r``): the binary, or a wrapper (runsc)."""
        self.runtime_args = tuple(runtime_args)
        """The runtime's global flags (``--root=...``), passed as ``--runtime-arg``."""
        self.socket_dir = socket_dir
        self.log_level = log_level
        self.reaper = reaper
        """If set, each conmon main process is adopted so it is reaped when it exits."""
        self.create_timeout = create_timeout

    # ----------------------------------------------------------------------------------------
    # paths

    def attach_socket(self, bundle: Path) -> Path:
        """The real attach socket (SOCK_SEQPACKET). Its path may exceed ``sun_path``: connect
        through ``attach_link`` or an ``O_PATH`` descriptor of the bundle instead."""
        return bundle / "attach"

    def attach_link(self, cid: str) -> Path:
        """The short path to the attach socket, through conmon's ``SOCKET_DIR/CID`` symlink."""
        return Path(self.socket_dir) / cid / "attach"

    @staticmethod
    def conmon_pid(bundle: Path) -> int | None:
        """The long-lived conmon's pid (from its ``-P`` file), if it was written."""
        return files.read_pid(bundle / "conmon.pid")

    def _runtime_args(self) -> list[str]:
        args: list[str] = []
        for arg in self.runtime_args:
            args += ["--runtime-arg", arg]
        return args

    def _env(self, sync_w: int, start_r: int) -> dict[str, str]:
        # A minimal environment: the runtime must not see e.g. NOTIFY_SOCKET or LISTEN_FDS.
        return {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"),
            "_OCI_SYNCPIPE": str(sync_w),
            "_OCI_STARTPIPE": str(start_r),
        }

    # ----------------------------------------------------------------------------------------
    # create

    async def create(
        self,
        cid: str,
        name: str,
        bundle: Path,
        log_path: str,
        *,
        tty: bool,
        stdin: bool,
        stdin_once: bool,
        exit_dir: Path,
        cgroup: str | None = None,
    ) -> int:
        """Create the container under a new conmon; return the container's pid.

        ``cgroup`` is a cgroupfs path (e.g. the pod's) conmon joins in every mounted
        hierarchy before it forks; missing directories are created, removing them is the
        caller's. The caller runs ``runtime.start(cid)`` afterwards.
        """
        link = self.attach_link(cid)
        if len(os.fsencode(link)) > SUN_PATH_MAX:
            raise ConmonError(
                f"attach socket path {str(link)!r} is longer than {SUN_PATH_MAX} bytes; "
                "use a shorter socket_dir"
            )
        self._prepare_create(cid, bundle, exit_dir)

        args = [
            self.conmon,
            "-b", str(bundle),
            "-c", cid,
            "-u", cid,
            "-n", name,
            "--exit-dir", str(exit_dir),
            "-l", f"k8s-file:{log_path}",
            "--log-level", self.log_level,
            "-P", str(bundle / "conmon.pid"),
            "-p", str(bundle / "pidfile"),
            "--persist-dir", str(bundle),
            "-r", self.runtime_path,
            "--socket-dir-path", self.socket_dir,
            *self._runtime_args(),
        ]  # fmt: skip
        if tty:
            args.append("-t")
        if stdin:
            args.append("-i")
            if not stdin_once:
                args.append("--leave-stdin-open")

        try:
            async with asyncio.timeout(self.create_timeout):
                with self.observer.invocation("conmon", self.backend, "create"):
                    return await self._create(cid, bundle, args, cgroup)
        except TimeoutError:
            self._abort_create(bundle)
            raise ConmonError(
                f"conmon create of {cid} took longer than {self.create_timeout} s"
            ) from None
        except BaseException:
            self._abort_create(bundle)
            raise

    def _prepare_create(self, cid: str, bundle: Path, exit_dir: Path) -> None:
        os.makedirs(self.socket_dir, exist_ok=True)
        exit_dir.mkdir(parents=True, exist_ok=True)
        # Files of an earlier incarnation would read as this one's exit.
        for stale in (exit_dir / cid, *(bundle / f for f in _BUNDLE_RUN_FILES)):
            stale.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.socket_dir, cid))

    async def _create(self, cid: str, bundle: Path, args: list[str], cgroup: str | None) -> int:
        async with syncpipe.spawn(args, cwd=bundle) as session:
            if cgroup:
                cgroupfs.join(session.process.pid, cgroup)
            session.go()
            rc = await session.process.wait()
            if rc != 0:
                raise ConmonError(f"conmon exited {rc}: {session.diagnostics_tail()}")
            msgs = syncpipe.parse(await session.reader.readline())
            if not msgs:
                raise ConmonError(f"conmon sent no container pid: {session.diagnostics_tail()}")
        pid = msgs[0].get("pid")
        if not isinstance(pid, int) or pid <= 0:
            message = runtime_message(str(msgs[0].get("message") or msgs[0]))
            raise ConmonError(f"runtime create failed: {message}")
        conmon_pid = files.read_pid(bundle / "conmon.pid")
        if self.reaper is not None and conmon_pid is not None:
            self.reaper.adopt(conmon_pid)
        log.debug("conmon %s: container %s pid %d", conmon_pid, cid, pid)
        return pid

    @staticmethod
    def _abort_create(bundle: Path) -> None:
        """Stop a conmon whose create failed or was abandoned; deleting the runtime's state
        is the caller's (it deletes the container)."""
        conmon_pid = files.read_pid(bundle / "conmon.pid")
        if conmon_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(conmon_pid, signal.SIGKILL)

    def remove(self, cid: str, exit_dir: Path) -> None:
        """Remove what conmon leaves outside the bundle: the socket symlink, the exit file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.socket_dir, cid))
        (exit_dir / cid).unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------
    # exit

    def exit_info(self, cid: str, bundle: Path, exit_dir: Path) -> ExitInfo | None:
        """The container's exit as conmon recorded it; None while it is running.

        conmon writes ``PERSIST_DIR/exit`` first and ``EXIT_DIR/CID`` right after (each
        atomically, by rename), so the persist-dir file is looked at first.
        """
        for path in (bundle / "exit", exit_dir / cid):
            try:
                mtime = path.stat().st_mtime_ns
                text = path.read_text().strip()
            except FileNotFoundError:
                continue
            if not text:
                continue  # created but not written yet
            try:
                code = int(text)
            except ValueError:
                log.warning("conmon: unreadable exit file %s: %r", path, text[:40])
                continue
            return ExitInfo(exit_code=code, finished_at=mtime, oom=(bundle / "oom").exists())
        return None

    def supervising(self, cid: str, bundle: Path) -> bool:
        """Whether the conmon of ``cid`` still runs: its ``-P`` pid is alive and was started
        with ``-c <cid>`` (a reused pid was not; a zombie's cmdline is empty). It writes the
        exit file when the container exits, so while it runs the container is not lost.
        Reads /proc only: startup asks this of every running container."""
        pid = self.conmon_pid(bundle)
        if pid is None:
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone
            return False
        return any(a == b"-c" and v == cid.encode() for a, v in itertools.pairwise(argv))

    async def wait_exit(self, cid: str, bundle: Path, exit_dir: Path) -> ExitInfo:
        """Wait for the exit file: a pidfd on the container's pid says when it is gone, then
        the file follows within milliseconds (short backoff polls, at most 100 ms apart)."""
        while (info := self.exit_info(cid, bundle, exit_dir)) is None:
            pid = files.read_pid(bundle / "pidfile")
            pidfd = waits.pidfd(pid) if pid is not None else None
            if pidfd is not None:
                try:
                    # Re-check the exit file now and then: a recycled pid would never fire.
                    while not await waits.wait_readable([pidfd], 5.0):
                        if self.exit_info(cid, bundle, exit_dir) is not None:
                            break
                finally:
                    os.close(pidfd)
            delay = 0.001
            for _ in range(50):
                if (info := self.exit_info(cid, bundle, exit_dir)) is not None:
                    return info
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        return info

    # ----------------------------------------------------------------------------------------
    # exec-sync

    async def exec_sync(
        self,
        cid: str,
        process: dict[str, Any],
        *,
        timeout: float | None,
        workdir: Path,
        limit: int = EXEC_SYNC_OUTPUT_LIMIT,
    ) -> ExecOutcome:
        """Run ``process`` (OCI process JSON) in the container and collect its output, each
        stream capped at ``limit`` bytes. The spec, log and pidfile live in a per-call
        directory below ``workdir``, removed afterwards. ``timeout`` None or <= 0 means
        none; on timeout the exec'd process tree is killed (``ExecOutcome.timed_out``)."""
        call = await asyncio.to_thread(execsync.prepare, workdir, process)
        args = [
            self.conmon,
            "-c", cid,
            "-n", cid,
            "-r", self.runtime_path,
            "-p", str(call.pidfile),
            "-e",
            "-l", f"k8s-file:{call.log}",
            "--socket-dir-path", self.socket_dir,
            "--log-level", self.log_level,
            "--sync",
            # Room for both streams plus record headers; each stream is capped again below.
            "--log-global-size-max", str(4 * limit + (1 << 20)),
            "--exec-process-spec", str(call.spec),
            *self._runtime_args(),
        ]  # fmt: skip
        if process.get("terminal"):
            args.append("-t")
        deadline = timeout if timeout is not None and timeout > 0 else None
        if deadline is not None:
            args += ["-T", str(math.ceil(deadline) + execsync.BACKSTOP)]
        try:
            with self.observer.invocation("conmon", self.backend, "exec"):
                return await execsync.collect(args, call, cid, deadline, limit)
        except execsync.ExecFailed as e:
            raise ConmonError(str(e)) from None
        finally:
            await asyncio.to_thread(shutil.rmtree, call.dir, True)

    # ----------------------------------------------------------------------------------------
    # ctl fifo

    @staticmethod
    def _ctl(bundle: Path, message: str) -> None:
        try:
            write_ctl(bundle, message)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                raise ConmonError(f"conmon for {bundle} is not running") from None
            raise

    async def reopen_log(self, bundle: Path, log_path: str, timeout: float = 10.0) -> None:
        """Make conmon reopen the log file (after it was rotated away) and return once it
        has: the new file exists at ``log_path`` (kubelet's log rotation and critest look
        for it as soon as ReopenContainerLog returns, as containerd's synchronous reopen
        guarantees). ConmonError if conmon is gone or does not reopen within ``timeout``."""
        before = _file_id(log_path)
        self._ctl(bundle, "2 0 0\n")
        conmon_pid = self.conmon_pid(bundle)
        pidfd = waits.pidfd(conmon_pid) if conmon_pid is not None else None
        gone = conmon_pid is not None and pidfd is None

        def reopened() -> bool:
            now = _file_id(log_path)
            return now is not None and now != before

        delay = 0.0005
        try:
            async with asyncio.timeout(timeout):
                while not reopened():
                    if gone:
                        # conmon exits when it cannot open the new file (its directory
                        # went away, say); it may also have reopened and then ended.
                        if reopened():
                            break
                        raise ConmonError(f"conmon for {bundle} exited without reopening the log")
                    if pidfd is None:
                        await asyncio.sleep(delay)
                    else:
                        gone = bool(await waits.wait_readable([pidfd], delay))
                    delay = min(delay * 2, 0.05)
        except TimeoutError:
            raise ConmonError(f"conmon did not reopen {log_path} within {timeout:g} s") from None
        finally:
            if pidfd is not None:
                os.close(pidfd)

    async def resize(self, bundle: Path, rows: int, cols: int) -> None:
        """Resize the container's tty."""
        self._ctl(bundle, f"1 {rows} {cols}\n")

    # ----------------------------------------------------------------------------------------
    # streaming sessions

    async def attach(
        self, bundle: Path, *, tty: bool, wait: Callable[[], Awaitable[int]]
    ) -> ConmonSession:
        """A session on the container's attach socket (output written from now on);
        ``wait`` gives the container's exit code. OSError if conmon does not listen."""
        sock = await AttachSocket.connect(bundle)

        async def resize(rows: int, cols: int) -> None:
            with contextlib.suppress(ConmonError):  # conmon is gone, and the container
                await self.resize(bundle, rows, cols)

        return ConmonSession(sock, tty=tty, resize=resize, wait=wait)

    async def exec_attach(
        self,
        cid: str,
        sf: SessionFiles,
        *,
        tty: bool,
        stdin: bool,
        kill: execattach.Killer = execattach.kill_by_pidfile,
    ) -> ExecAttach:
        """Start the process of a prepared session directory (``execattach.prepare``;
        its name is the session id) under a conmon of its own. StreamStartError if it
        cannot start."""
        session_id = sf.dir.name
        link = Path(self.socket_dir) / session_id
        argv = execattach.conmon_argv(
            self.conmon,
            cid=cid,
            session_id=session_id,
            sf=sf,
            runtime_path=self.runtime_path,
            runtime_args=self.runtime_args,
            socket_dir=self.socket_dir,
            tty=tty,
            stdin=stdin,
        )
        with self.observer.invocation("conmon", self.backend, "exec-attach"):
            return await ExecAttach.start(argv, sf, link=link, tty=tty, kill=kill)
