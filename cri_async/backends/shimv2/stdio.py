"""A process's stdio as the FIFOs containerd shims expect, opened so that nothing blocks.

A shim takes stdio as paths (CreateTaskRequest / ExecProcessRequest stdin, stdout, stderr)
and opens them itself: stdout and stderr for writing (plus a read end of its own, so a
reader going away never breaks the container's pipe), stdin for reading. Opening a FIFO
blocks until the other side is there, so the order matters:

* stdout/stderr: we open the read end ``O_RDONLY|O_NONBLOCK`` before the shim is asked to
  create the process; that never blocks, and the shim's blocking write-open then finds us.
  Until a writer has come (and gone) the read end shows no readiness at all, so the event
  loop does not see a premature end of file.
* stdin: we open ``O_RDWR|O_NONBLOCK``, which on Linux never blocks either, and write
  through it. Were no writer open when the shim starts copying, it would read end of file
  at once and close the container's stdin.
* End of input takes both sides: containerd shims hold a write end of the stdin FIFO
  themselves, dropped on the task API's CloseIO. The process sees end of file once we
  closed ours (``close_stdin``) and the shim was asked to CloseIO.
* With a terminal there is no stderr: the shim copies the pty to stdout.

Output arrives as ``(Stream, bytes)`` chunks on a sink callback, the shape of
:meth:`cri_async.logs.crilog.OutputCapture.write` (and of the CRI log writer), so the
caller decides whether bytes become a CRI log file or a captured ExecSync answer.
After a restart of our process the same FIFOs are opened again with :meth:`ProcessIO.open`
(``create=False``); the shim still holds its ends, so output written meanwhile (up to the
pipe's buffer) is read then.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cri_async.logs.crilog import Stream

from .records import Stdio

__all__ = ["ProcessIO", "Sink"]

Sink = Callable[[Stream, bytes], None]

_NAMES = {Stream.STDOUT: "stdout", Stream.STDERR: "stderr"}


class _Reader(asyncio.Protocol):
    def __init__(self, stream: Stream, sink: Sink, done: asyncio.Future[None]) -> None:
        self._stream = stream
        self._sink = sink
        self._done = done

    def data_received(self, data: bytes) -> None:
        self._sink(self._stream, data)

    def eof_received(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(None)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


class ProcessIO:
    """The FIFOs of one process under ``dir`` (``stdin``, ``stdout``, ``stderr``)."""

    def __init__(self, dir: Path, *, stdin: bool, terminal: bool) -> None:
        self.dir = dir
        self.has_stdin = stdin
        self.terminal = terminal
        self.streams = (Stream.STDOUT,) if terminal else (Stream.STDOUT, Stream.STDERR)
        self._files: dict[Stream, BinaryIO] = {}
        self._stdin_fd: int | None = None
        self._transports: list[asyncio.ReadTransport] = []
        self._eof: list[asyncio.Future[None]] = []

    @property
    def stdio(self) -> Stdio:
        """The paths to hand to the shim's Create or Exec."""
        return Stdio(
            stdin=str(self.dir / "stdin") if self.has_stdin else "",
            stdout=str(self.dir / "stdout"),
            stderr="" if self.terminal else str(self.dir / "stderr"),
            terminal=self.terminal,
        )

    @classmethod
    def open(
        cls, dir: Path, *, stdin: bool = False, terminal: bool = False, create: bool = True
    ) -> ProcessIO:
        """Make (``create``) and open the FIFOs. Synchronous and quick: mkfifo and
        non-blocking opens only."""
        io = cls(dir, stdin=stdin, terminal=terminal)
        made: list[Path] = []
        try:
            if create:
                dir.mkdir(parents=True, exist_ok=True)
                for name in io._names():
                    os.mkfifo(dir / name, 0o600)
                    made.append(dir / name)
            for stream in io.streams:
                fd = os.open(dir / _NAMES[stream], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                io._files[stream] = os.fdopen(fd, "rb", buffering=0)
            if stdin:
                io._stdin_fd = os.open(dir / "stdin", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            io.close()
            for path in made:
                path.unlink()
            raise
        return io

    def _names(self) -> list[str]:
        return [_NAMES[s] for s in self.streams] + (["stdin"] if self.has_stdin else [])

    async def start(self, sink: Sink) -> None:
        """Deliver output to ``sink`` from now on, as the event loop reads it."""
        loop = asyncio.get_running_loop()
        files, self._files = self._files, {}
        for stream, f in files.items():
            done: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.connect_read_pipe(
                functools.partial(_Reader, stream, sink, done), f
            )
            self._transports.append(transport)
            self._eof.append(done)

    async def wait_eof(self) -> None:
        """Return when every output stream has ended: the process and everything holding
        its pipes exited, and the shim closed its ends (after a Delete at the latest)."""
        await asyncio.gather(*self._eof)

    async def write_stdin(self, data: bytes) -> None:
        """Write all of ``data`` to the process's stdin, waiting while the pipe is full."""
        if self._stdin_fd is None:
            raise ValueError("this process has no stdin (or it was closed)")
        fd = self._stdin_fd
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await _writable(loop, fd)
                continue
            view = view[n:]

    def close_stdin(self) -> None:
        """Close our stdin end. With the shim's CloseIO (it holds a write end too), the
        process sees end of input once the shim has copied what is buffered."""
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close every end we hold (the FIFOs stay, for a later :meth:`open`)."""
        self.close_stdin()
        for t in self._transports:
            t.close()
        self._transports.clear()
        for f in self._files.values():
            f.close()
        self._files.clear()

    def remove(self) -> None:
        """Delete the FIFOs and their directory (if empty). Call after :meth:`close`."""
        for name in ("stdin", "stdout", "stderr"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / name)
        try:
            self.dir.rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise
