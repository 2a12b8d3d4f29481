"""One conmon per container: create through conmon, exit files, exec-sync, the ctl fifo.

Protocol facts (conmon 2.1.6 with runc 1.1.5 and crun 1.8.1, platform.md rows 2a-2g):

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
* The attach socket is bound at ``SOCKET_DIR/CID/attach`` through a symlink ``SOCKET_DIR/CID``
  to the bundle, so that path has to fit ``sun_path`` (107 bytes plus NUL).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cri_async.backends.ocicli import RuntimeCLI, runtime_message
from cri_async.logs.crilog import EXEC_SYNC_OUTPUT_LIMIT, OutputCapture, ParseError, Stream
from cri_async.logs.crilog import parse_line as _parse_log_line
from cri_async.monitor.reaper import Reaper

__all__ = ["SUN_PATH_MAX", "Conmon", "ConmonError", "ExitInfo"]

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107
"""Longest AF_UNIX path in bytes (``sun_path`` is 108 bytes including the NUL)."""

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_SYNC_LINE_MAX = 1 << 20
_EXEC_BACKSTOP = 5
"""Seconds after our own exec timeout that conmon's ``-T`` fires, should ours not work."""
_STDERR_KEEP = 2000
_BUNDLE_RUN_FILES = ("exit", "oom", "pidfile", "conmon.pid")


@dataclass(frozen=True, slots=True)
class ExitInfo:
    exit_code: int
    finished_at: int
    """Unix ns: the exit file's mtime (conmon writes it 1.5-2 ms after the exit)."""
    oom: bool


class ConmonError(Exception):
    """conmon or the runtime under it failed; the message carries the runtime's words."""


def _read_tail(f: IO[bytes]) -> str:
    f.seek(0)
    text = f.read().decode(errors="replace").strip()
    return text[-_STDERR_KEEP:]


def _hierarchies() -> list[Path]:
    # A pure cgroup2 host mounts its one hierarchy at the root; v1 and hybrid hosts mount one
    # per controller (plus name=systemd and unified) below it.
    if (_CGROUP_ROOT / "cgroup.procs").exists():
        return [_CGROUP_ROOT]
    return [h for h in sorted(_CGROUP_ROOT.iterdir()) if (h / "cgroup.procs").exists()]


def _join_cgroup(pid: int, cgroup: str) -> None:
    """Move ``pid`` into ``cgroup`` in every mounted hierarchy (created when missing)."""
    rel = Path(cgroup.strip("/"))
    for hierarchy in _hierarchies():
        target = hierarchy
        for part in rel.parts:
            parent, target = target, target / part
            if target.is_dir():
                continue
            target.mkdir(exist_ok=True)
            # A new v1 cpuset starts with no cpus/mems and refuses tasks (ENOSPC) until
            # they are set; inherit the parent's.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (target / name).exists() and not (target / name).read_text().strip():
                    (target / name).write_text((parent / name).read_text())
        (target / "cgroup.procs").write_text(f"{pid}\n")


async def _open_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_SYNC_LINE_MAX)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


def _parse_sync(data: bytes) -> list[dict[str, Any]]:
    """The JSON messages conmon wrote on the sync pipe (one per line)."""
    out: list[dict[str, Any]] = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("conmon: unparsable sync message %r", line[:200])
            continue
        if isinstance(msg, dict):
            out.append(msg)
    return out


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_exec_log(path: Path, limit: int) -> tuple[bytes, bytes]:
    """stdout and stderr of an exec-sync log, each capped at ``limit`` bytes (in a thread)."""
    capture = OutputCapture(limit)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return b"", b""
    with f:
        for line in f:
            try:
                capture.add_record(_parse_log_line(line))
            except ParseError:
                continue  # conmon only writes valid records; a torn last line is skipped
    return capture.output(Stream.STDOUT), capture.output(Stream.STDERR)


def _prepare_exec(workdir: Path, process: dict[str, Any]) -> Path:
    """A fresh directory for one exec below ``workdir``, holding its ``process.json``.

    One per call, so concurrent execs in the same container can share ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    calldir = Path(tempfile.mkdtemp(prefix="exec-", dir=workdir))
    (calldir / "process.json").write_text(json.dumps(process))
    return calldir


async def _wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait until ``fd`` is readable; False on timeout."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, parents before children (via /proc children)."""
    found = [root]
    i = 0
    while i < len(found):
        pid = found[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    found.extend(int(p) for p in f.read().split())
            except OSError:
                continue
    return found


def _kill_tree(pid: int | None) -> None:
    """SIGKILL ``pid`` and its descendants; they are stopped first so none can fork away."""
    if pid is None:
        return
    stopped: set[int] = set()
    for _ in range(100):
        new = [p for p in _descendants(pid) if p not in stopped]
        if not new:
            break
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        stopped.update(new)
    for p in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


class Conmon:
    """Runs conmon for the containers of one runtime (``runtime``'s binary and root)."""

    def __init__(
        self,
        conmon: str,
        runtime: RuntimeCLI,
        *,
        runtime_path: str,
        socket_dir: str,
        log_level: str = "info",
        reaper: Reaper | None = None,
        create_timeout: float = 120.0,
    ) -> None:
        self.conmon = conmon
        self.runtime = runtime
        self.runtime_path = runtime_path
        """What conmon executes as the runtime (``-r``): the binary, or a wrapper (runsc)."""
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
        return _read_pid(bundle / "conmon.pid")

    def _runtime_args(self) -> list[str]:
        args: list[str] = []
        for arg in self.runtime.global_args():
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
                return await self._create(cid, bundle, args, cgroup)
        except TimeoutError:
            await self._abort_create(cid, bundle)
            raise ConmonError(
                f"conmon create of {cid} took longer than {self.create_timeout} s"
            ) from None
        except BaseException:
            await asyncio.shield(self._abort_create(cid, bundle))
            raise

    def _prepare_create(self, cid: str, bundle: Path, exit_dir: Path) -> None:
        os.makedirs(self.socket_dir, exist_ok=True)
        exit_dir.mkdir(parents=True, exist_ok=True)
        # Files of an earlier incarnation would read as this one's exit.
        for stale in (exit_dir / cid, *(bundle / f for f in _BUNDLE_RUN_FILES)):
            stale.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.socket_dir, cid))

    async def _spawn(
        self, args: list[str], errf: IO[bytes], sync_w: int, start_r: int, cwd: Path
    ) -> asyncio.subprocess.Process:
        """Start conmon with the two pipes of its sync protocol. Its diagnostics go to a file,
        never a pipe; it runs in ``cwd`` because it drops stray files (an "oom" marker) there."""
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=errf,
            stderr=errf,
            pass_fds=(sync_w, start_r),
            env=self._env(sync_w, start_r),
            cwd=cwd,
        )

    async def _create(self, cid: str, bundle: Path, args: list[str], cgroup: str | None) -> int:
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        transport: asyncio.BaseTransport | None = None
        proc: asyncio.subprocess.Process | None = None
        # conmon's own diagnostics go to a file, never a pipe: its daemon half would keep a
        # pipe open for the container's lifetime (platform.md 8i).
        with tempfile.TemporaryFile(prefix="conmon-") as errf:
            try:
                try:
                    proc = await self._spawn(args, errf, sync_w, start_r, bundle)
                finally:
                    os.close(sync_w)
                    os.close(start_r)
                try:
                    if cgroup:
                        _join_cgroup(proc.pid, cgroup)
                    os.write(start_w, b"0")
                finally:
                    os.close(start_w)
                    start_w = -1
                rc = await proc.wait()
                if rc != 0:
                    raise ConmonError(f"conmon exited {rc}: {_read_tail(errf)}")
                reader, transport = await _open_reader(sync_r)
                sync_r = -1
                line = await reader.readline()
            except BaseException:
                # Timed out or cancelled before conmon forked: stop it from going on.
                if proc is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                raise
            finally:
                if start_w >= 0:
                    os.close(start_w)
                if sync_r >= 0:
                    os.close(sync_r)
                if transport is not None:
                    transport.close()
            msgs = _parse_sync(line)
            if not msgs:
                raise ConmonError(f"conmon sent no container pid: {_read_tail(errf)}")
        pid = msgs[0].get("pid")
        if not isinstance(pid, int) or pid <= 0:
            message = runtime_message(str(msgs[0].get("message") or msgs[0]))
            raise ConmonError(f"runtime create failed: {message}")
        conmon_pid = _read_pid(bundle / "conmon.pid")
        if self.reaper is not None and conmon_pid is not None:
            self.reaper.adopt(conmon_pid)
        log.debug("conmon %s: container %s pid %d", conmon_pid, cid, pid)
        return pid

    async def _abort_create(self, cid: str, bundle: Path) -> None:
        conmon_pid = _read_pid(bundle / "conmon.pid")
        if conmon_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(conmon_pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await self.runtime.delete(cid, force=True)

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

    async def wait_exit(self, cid: str, bundle: Path, exit_dir: Path) -> ExitInfo:
        """Wait for the exit file: a pidfd on the container's pid says when it is gone, then
        the file follows within milliseconds (short backoff polls, at most 100 ms apart)."""
        while (info := self.exit_info(cid, bundle, exit_dir)) is None:
            pid = _read_pid(bundle / "pidfile")
            pidfd = -1
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    pidfd = os.pidfd_open(pid)
            if pidfd >= 0:
                try:
                    # Re-check the exit file now and then: a recycled pid would never fire.
                    while not await _wait_readable(pidfd, 5.0):
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
    ) -> tuple[int, bytes, bytes, bool]:
        """Run ``process`` (OCI process JSON) in the container and collect its output.

        Returns (exit code, stdout, stderr, timed out); each stream is capped at ``limit``
        bytes. The spec, log and pidfile live in a per-call directory below ``workdir``,
        removed afterwards. ``timeout`` None or <= 0 means none. On timeout the exec'd
        process and all its descendants are stopped and killed here (the exit code is then
        -1): conmon's own ``-T`` only kills the process group, which a ``setsid`` child
        leaves; it stays as a backstop a little later.
        """
        calldir = _prepare_exec(workdir, process)
        try:
            return await self._exec_sync(cid, process, timeout, calldir, limit)
        finally:
            shutil.rmtree(calldir, ignore_errors=True)

    async def _exec_sync(
        self, cid: str, process: dict[str, Any], timeout: float | None, calldir: Path, limit: int
    ) -> tuple[int, bytes, bytes, bool]:
        spec = calldir / "process.json"
        log_path = calldir / "exec.log"
        pidfile = calldir / "exec.pid"
        args = [
            self.conmon,
            "-c", cid,
            "-n", cid,
            "-r", self.runtime_path,
            "-p", str(pidfile),
            "-e",
            "-l", f"k8s-file:{log_path}",
            "--socket-dir-path", self.socket_dir,
            "--log-level", self.log_level,
            "--sync",
            # Room for both streams plus record headers; each stream is capped again below.
            "--log-global-size-max", str(4 * limit + (1 << 20)),
            "--exec-process-spec", str(spec),
            *self._runtime_args(),
        ]  # fmt: skip
        if process.get("terminal"):
            args.append("-t")
        deadline = timeout if timeout is not None and timeout > 0 else None
        if deadline is not None:
            args += ["-T", str(math.ceil(deadline) + _EXEC_BACKSTOP)]

        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        transport: asyncio.BaseTransport | None = None
        proc: asyncio.subprocess.Process | None = None
        read: asyncio.Task[bytes] | None = None
        timed_out = False
        with tempfile.TemporaryFile(prefix="conmon-exec-") as errf:
            try:
                try:
                    proc = await self._spawn(args, errf, sync_w, start_r, calldir)
                finally:
                    os.close(sync_w)
                    os.close(start_r)
                try:
                    os.write(start_w, b"0")
                finally:
                    os.close(start_w)
                    start_w = -1
                reader, transport = await _open_reader(sync_r)
                sync_r = -1
                # A task, so that the bytes read so far survive the timeout.
                read = asyncio.ensure_future(reader.read())
                try:
                    data = await asyncio.wait_for(asyncio.shield(read), deadline)
                except TimeoutError:
                    timed_out = True
                    # Again until conmon reports: the runtime may not have written the pid yet.
                    while not read.done():
                        _kill_tree(_read_pid(pidfile))
                        await asyncio.wait([read], timeout=0.5)
                    data = await read
                rc = await proc.wait()
            except BaseException:
                # Cancelled (or failed): nothing of the exec may outlive the call.
                _kill_tree(_read_pid(pidfile))
                if proc is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.shield(proc.wait())
                raise
            finally:
                if read is not None and not read.done():
                    read.cancel()
                if start_w >= 0:
                    os.close(start_w)
                if sync_r >= 0:
                    os.close(sync_r)
                if transport is not None:
                    transport.close()
            msgs = [m for m in _parse_sync(data) if "exit_code" in m]
            if not msgs:
                raise ConmonError(f"conmon exec exited {rc} without a result: {_read_tail(errf)}")
        result = msgs[-1]
        raw = result.get("exit_code")
        message = str(result.get("message") or "")
        if not isinstance(raw, int) or raw < 0:
            if "timed out" not in message:
                raise ConmonError(f"exec in {cid} failed: {runtime_message(message) or result}")
            timed_out = True
        # After our kill conmon reports 137; CRI callers only look at timed_out then.
        code = raw if isinstance(raw, int) and not timed_out else -1
        stdout, stderr = await asyncio.to_thread(_read_exec_log, log_path, limit)
        return code, stdout, stderr, timed_out

    # ----------------------------------------------------------------------------------------
    # ctl fifo

    @staticmethod
    def _ctl(bundle: Path, message: str) -> None:
        try:
            fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                raise ConmonError(f"conmon for {bundle} is not running") from None
            raise
        try:
            os.write(fd, message.encode())
        finally:
            os.close(fd)

    async def reopen_log(self, bundle: Path) -> None:
        """Make conmon reopen the log file (after it was rotated away)."""
        self._ctl(bundle, "2 0 0\n")

    async def resize(self, bundle: Path, rows: int, cols: int) -> None:
        """Resize the container's tty."""
        self._ctl(bundle, f"1 {rows} {cols}\n")
