"""One interactive exec (``kubectl exec``): a process in a running container, under a conmon
of its own in exec-attach mode, streamed through that conmon's attach socket.

The protocol (conmon ``--api-version 1 -e --exec-attach --sync``, tested with conmon 2.1.6
on runc, crun and runsc):

1. conmon gets the sync, start and attach pipes (``syncpipe``); a first byte on the start
   pipe lets it set up ``<session dir>/attach`` (reached through the symlink
   ``<socket dir>/<session id>``) and the ``ctl`` fifo, then it writes ``{"data": 0}`` on
   the attach pipe;
2. we connect to the attach socket (and may resize through ``ctl`` already), then a second
   byte lets it run ``<runtime> exec --detach --process <spec> [--tty --console-socket]``,
   so no output is written before we listen;
3. the sync pipe says ``{"data": <pid>}`` (or ``{"data": -N, "message": ...}`` when the
   runtime failed), and at the end ``{"data": <exit code>}``, after the last output went
   out and conmon closed the attach connections.

Each session has its own directory (the spec, the runtime's pid file, conmon's fifos); the
runtime's debug lines would land on the process's stderr, so conmon logs at ``warning``
here. Closing a session whose process still runs kills it (``kill``), reads the socket
until conmon closes it at its exit (never closing first: ``attach`` says why), lets conmon
finish, and removes the directory and the socket symlink: nothing outlives the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async import files, proc, waits
from cri_async.core.streams import StreamStartError
from cri_async.monitor import syncpipe
from cri_async.monitor.attach import AttachSocket, ConmonSession, write_ctl
from cri_async.oci.errors import runtime_message

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
"""Seconds from spawning conmon until the process runs (the runtime's exec included)."""
EXIT_TIMEOUT = 10.0
"""Seconds conmon may take to finish once the process was killed, before it is killed."""
LOG_LEVEL = "warning"


@dataclass(frozen=True, slots=True)
class SessionFiles:
    """One session's directory (conmon's ``-b``): spec, fifos, attach socket, pid file."""

    dir: Path

    @property
    def spec(self) -> Path:
        return self.dir / "process.json"

    @property
    def pidfile(self) -> Path:
        # One level down: runsc's wrapper looks for its marker next to the pid file's dir.
        return self.dir / "run" / "exec.pid"


def prepare(directory: Path, process: dict[str, Any]) -> SessionFiles:
    """Create the session's directory with its ``process.json`` (in a thread)."""
    sf = SessionFiles(directory)
    (directory / "run").mkdir(parents=True)
    sf.spec.write_text(json.dumps(process))
    return sf


def conmon_argv(
    conmon: str,
    *,
    cid: str,
    session_id: str,
    sf: SessionFiles,
    runtime_path: str,
    runtime_args: Sequence[str],
    socket_dir: str,
    tty: bool,
    stdin: bool,
) -> list[str]:
    args = [
        conmon,
        "--api-version", "1",
        "-c", cid,
        "-u", session_id,
        "-n", cid,
        "-r", runtime_path,
        "-b", str(sf.dir),
        "-p", str(sf.pidfile),
        "-l", "none",
        "--socket-dir-path", socket_dir,
        "--log-level", LOG_LEVEL,
        "-e", "--exec-attach", "--sync",
        "--exec-process-spec", str(sf.spec),
    ]  # fmt: skip
    for arg in runtime_args:
        args += ["--runtime-arg", arg]
    if tty:
        args.append("-t")
    if stdin:
        args.append("-i")
    return args


def _message(msgs: list[dict[str, Any]]) -> int | None:
    """The ``data`` value of the first message that has one."""
    for m in msgs:
        value = m.get("data")
        if isinstance(value, int):
            return value
    return None


def _alive(pidfd: int | None) -> bool:
    return pidfd is not None and not select.select([pidfd], [], [], 0)[0]


Killer = Callable[[SessionFiles], Awaitable[None]]
"""Ends a session's process (and what it started) while it runs."""


async def kill_by_pidfile(sf: SessionFiles) -> None:
    """The default killer: the process the runtime's pid file names, with its children
    (runc and crun exec the command there)."""
    proc.kill_tree(files.read_pid(sf.pidfile))


class ExecAttach(ConmonSession):
    """A running exec session; see the module's notes. Build it with ``start``."""

    def __init__(
        self,
        sock: AttachSocket,
        *,
        tty: bool,
        spawned: syncpipe.Session,
        stack: contextlib.AsyncExitStack,
        sf: SessionFiles,
        link: Path,
        pid: int,
        kill: Killer,
    ) -> None:
        super().__init__(
            sock, tty=tty, resize=self._resize_tty, wait=self._wait_exit, release=self._release
        )
        self.spawned = spawned
        self.files = sf
        self.pid = pid
        self._stack = stack
        self._link = link
        self._kill = kill
        self._pidfd = waits.pidfd(pid)
        self._exit: int | None = None
        self._exit_lock = asyncio.Lock()

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        sf: SessionFiles,
        *,
        link: Path,
        tty: bool,
        kill: Killer = kill_by_pidfile,
        timeout: float = START_TIMEOUT,
    ) -> ExecAttach:
        """Run conmon (``argv``, from ``conmon_argv``) for a prepared session directory;
        ``link`` is the socket symlink conmon makes. StreamStartError if the process cannot
        be started; nothing is left behind then."""
        stack = contextlib.AsyncExitStack()
        stack.push_async_callback(_remove, sf.dir, link)
        spawned: syncpipe.Session | None = None
        try:
            async with asyncio.timeout(timeout):
                spawned = await stack.enter_async_context(
                    syncpipe.spawn(argv, cwd=sf.dir, attach=True)
                )
                stack.push_async_callback(_finish_conmon, spawned)
                spawned.go(more=True)
                ready = _message(syncpipe.parse(await spawned.attach_reader.readline()))
                if ready != 0:
                    raise StreamStartError(f"conmon did not start: {spawned.diagnostics_tail()}")
                sock = await AttachSocket.connect(sf.dir)
                stack.callback(sock.close)
                spawned.go()
                msgs = syncpipe.parse(await spawned.reader.readline())
                pid = _message(msgs)
                if pid is None or pid <= 0:
                    text = next((str(m["message"]) for m in msgs if m.get("message")), "")
                    why = runtime_message(text) or spawned.diagnostics_tail() or "no reason given"
                    raise StreamStartError(f"cannot exec in the container: {why}")
        except BaseException as e:
            await _abandon(stack, spawned, sf, kill)
            if isinstance(e, TimeoutError):
                raise StreamStartError(f"the exec did not start within {timeout:g} s") from None
            raise
        return cls(
            sock, tty=tty, spawned=spawned, stack=stack, sf=sf, link=link, pid=pid, kill=kill
        )

    async def _resize_tty(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):  # conmon is gone: so is the process
            write_ctl(self.files.dir, f"1 {rows} {cols}\n")

    async def _wait_exit(self) -> int:
        async with self._exit_lock:
            if self._exit is None:
                code = _message(syncpipe.parse(await self.spawned.reader.readline()))
                if code is None or code < 0:
                    raise RuntimeError(
                        f"conmon reported no exit code: {self.spawned.diagnostics_tail()}"
                    )
                self._exit = code
            return self._exit

    @property
    def running(self) -> bool:
        """The exec'd process (its host-side pid) has not exited yet."""
        return self._exit is None and _alive(self._pidfd)

    async def _release(self) -> None:
        """End the process if it still runs, then leave the socket once conmon closes it
        at its exit (reading till then: conmon may be blocked writing to us, and must not
        see a failed write before our end of input, see ``attach``)."""
        self._sock.shutdown_write()
        try:
            if self.running:
                await self._kill(self.files)
            await self._sock.leave(EXIT_TIMEOUT)
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            await self._stack.aclose()


def _kill_conmon(spawned: syncpipe.Session) -> None:
    # Only while it is our unreaped child: its pid cannot have been reused.
    if spawned.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spawned.process.pid, signal.SIGKILL)  # conmon leads its own session


async def _finish_conmon(spawned: syncpipe.Session) -> None:
    """conmon ends once the process has: give it a while, then kill it."""
    try:
        await asyncio.wait_for(asyncio.shield(spawned.process.wait()), EXIT_TIMEOUT)
    except TimeoutError:
        log.warning("exec session's conmon %d did not finish; killing it", spawned.process.pid)
        _kill_conmon(spawned)
        await spawned.process.wait()


async def _abandon(
    stack: contextlib.AsyncExitStack,
    spawned: syncpipe.Session | None,
    sf: SessionFiles,
    kill: Killer,
) -> None:
    """A start that failed, timed out or was cancelled: conmon, its runtime and anything
    already exec'd are killed at once, then the session's files go."""

    async def run() -> None:
        if spawned is not None:
            _kill_conmon(spawned)
        with contextlib.suppress(Exception):
            await kill(sf)
        await stack.aclose()

    with contextlib.suppress(Exception):
        await asyncio.shield(run())


async def _remove(directory: Path, link: Path) -> None:
    def run() -> None:
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)

    await asyncio.to_thread(run)
