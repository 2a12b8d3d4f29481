"""conmon's start and sync pipes: spawning conmon with them and reading what it reports.

conmon gets two inherited pipe fds named by ``_OCI_SYNCPIPE`` (conmon writes JSON lines to
us) and ``_OCI_STARTPIPE`` (conmon blocks until we write a byte, so it can be moved into a
cgroup before it forks anything). conmon's own diagnostics go to a file, never a pipe: its
daemon half would keep a pipe open for the container's lifetime.
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
        self._transport: asyncio.BaseTransport | None = None

    def go(self) -> None:
        """Let conmon go on (after it was moved into its cgroup). If it has already exited
        (it checks its arguments and opens the log first), its exit status and diagnostics
        say why: the caller reads them next."""
        try:
            os.write(self._start_w, b"0")
        except BrokenPipeError:
            pass
        finally:
            os.close(self._start_w)
            self._start_w = -1

    @property
    def reader(self) -> asyncio.StreamReader:
        assert self._reader is not None
        return self._reader

    def diagnostics_tail(self) -> str:
        return tail(self.diagnostics)

    def _close(self) -> None:
        if self._start_w >= 0:
            os.close(self._start_w)
            self._start_w = -1
        if self._transport is not None:
            self._transport.close()
            self._transport = None


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
    argv: Sequence[str], *, cwd: Path, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Session]:
    """Start conmon with both pipes. If the body raises (a timeout, a cancellation) conmon
    is killed if it is still our child; our pipe ends are closed on leaving. It runs in
    ``cwd`` because it drops stray files (an "oom" marker) there; the runtime sees a minimal
    environment (never e.g. NOTIFY_SOCKET or LISTEN_FDS)."""
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"),
        "_OCI_SYNCPIPE": str(sync_w),
        "_OCI_STARTPIPE": str(start_r),
        **(extra_env or {}),
    }
    child_ends = [sync_w, start_r]  # conmon's; ours to close once it has them

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
                pass_fds=(sync_w, start_r),
            ) as process:
                close_child_ends()
                session = Session(process, errf)
                session._start_w, start_w = start_w, -1
                fd, sync_r = sync_r, -1  # the reader owns it from here
                session._reader, session._transport = await _open_reader(fd)
                yield session
    finally:
        close_child_ends()
        if start_w >= 0:
            os.close(start_w)
        if sync_r >= 0:
            os.close(sync_r)
        if session is not None:
            session._close()
