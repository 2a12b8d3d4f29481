"""conmon's start and sync pipes: spawning conmon with them and reading what it reports.

conmon gets two inherited pipe fds named by ``_OCI_SYNCPIPE`` (conmon writes JSON lines to
us) and ``_OCI_STARTPIPE`` (conmon blocks until we write a byte, so it can be moved into a
cgroup before it forks anything). conmon's own diagnostics go to a file, never a pipe: its
daemon half would keep a pipe open for the container's lifetime.

An exec-attach session (``--exec-attach``) adds a third, ``_OCI_ATTACHPIPE``: conmon writes
``{"data": 0}`` there once its attach socket listens, and reads a *second* byte from the
start pipe before it runs the runtime, so that no output is written before we connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from cri_async import proc

log = logging.getLogger(__name__)

LINE_MAX = 1 << 20
STDERR_KEEP = 2000


def parse(data: bytes) -> list[dict[str, Any]]:
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


def tail(f: IO[bytes]) -> str:
    """The end of conmon's diagnostics file."""
    f.seek(0)
    text = f.read().decode(errors="replace").strip()
    return text[-STDERR_KEEP:]


class Session:
    """One conmon run: the process, its diagnostics file and our ends of the two pipes."""

    def __init__(self, process: asyncio.subprocess.Process, diagnostics: IO[bytes]) -> None:
        self.process = process
        self.diagnostics = diagnostics
        self._start_w = -1
        self._reader: asyncio.StreamReader | None = None
        self._attach_reader: asyncio.StreamReader | None = None
        self._transports: list[asyncio.BaseTransport] = []

    def go(self, *, more: bool = False) -> None:
        """Let conmon go on (after it was moved into its cgroup). ``more``: keep the pipe
        for another byte (exec-attach waits for a second one before running the runtime).
        If conmon has already exited (it checks its arguments and opens the log first), its
        exit status and diagnostics say why: the caller reads them next."""
        try:
            os.write(self._start_w, b"0")
        except BrokenPipeError:
            pass
        finally:
            if not more:
                os.close(self._start_w)
                self._start_w = -1

    @property
    def reader(self) -> asyncio.StreamReader:
        assert self._reader is not None
        return self._reader

    @property
    def attach_reader(self) -> asyncio.StreamReader:
        """The attach pipe (``spawn(..., attach=True)`` only)."""
        assert self._attach_reader is not None
        return self._attach_reader

    def diagnostics_tail(self) -> str:
        return tail(self.diagnostics)

    def _close(self) -> None:
        if self._start_w >= 0:
            os.close(self._start_w)
            self._start_w = -1
        while self._transports:
            self._transports.pop().close()


async def _open_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_MAX)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


@contextlib.asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    extra_env: dict[str, str] | None = None,
    attach: bool = False,
) -> AsyncIterator[Session]:
    """Start conmon with both pipes (and the attach pipe with ``attach``). If the body
    raises (a timeout, a cancellation) conmon is killed if it is still our child; our pipe
    ends are closed on leaving. It runs in ``cwd`` because it drops stray files (an "oom"
    marker) there; the runtime sees a minimal environment (never e.g. NOTIFY_SOCKET or
    LISTEN_FDS)."""
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    attach_r, attach_w = os.pipe2(os.O_CLOEXEC) if attach else (-1, -1)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"),
        "_OCI_SYNCPIPE": str(sync_w),
        "_OCI_STARTPIPE": str(start_r),
        **({"_OCI_ATTACHPIPE": str(attach_w)} if attach else {}),
        **(extra_env or {}),
    }
    child_ends = [fd for fd in (sync_w, start_r, attach_w) if fd >= 0]
    ours = [fd for fd in (sync_r, attach_r) if fd >= 0]  # until a reader owns them

    def close_child_ends() -> None:
        while child_ends:
            os.close(child_ends.pop())

    session: Session | None = None
    try:
        with tempfile.TemporaryFile(prefix="conmon-") as errf:
            async with proc.started(
                argv,
                stdout=errf.fileno(),
                stderr=errf.fileno(),
                env=env,
                cwd=cwd,
                pass_fds=tuple(child_ends),
            ) as process:
                close_child_ends()
                session = Session(process, errf)
                session._start_w, start_w = start_w, -1
                ours.remove(sync_r)
                session._reader, transport = await _open_reader(sync_r)
                session._transports.append(transport)
                if attach:
                    ours.remove(attach_r)
                    session._attach_reader, transport = await _open_reader(attach_r)
                    session._transports.append(transport)
                yield session
    finally:
        close_child_ends()
        if start_w >= 0:
            os.close(start_w)
        for fd in ours:
            os.close(fd)
        if session is not None:
            session._close()
