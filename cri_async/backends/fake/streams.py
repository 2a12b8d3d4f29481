"""Streaming sessions on the fake backend's simulated processes.

An exec'd command's timeline (or an ExecSync hook's result) is played back into the
session as output, then its exit code; an attach sees the container's output from then on
until it exits. A simulated process reads no input, so sessions asking for stdin are
refused rather than given a stdin that goes nowhere; there is no terminal either, so with
``tty`` stderr simply joins stdout and resizes change nothing. Output is queued without a
bound: a timeline is finite and precomputed, so it never holds more than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cri_async.core.ports import ExitStatus
from cri_async.core.streams import OutputChunk, OutputStream, Stdio, StreamStartError, TerminalSize
from cri_async.logs.crilog import Stream


def refuse_stdin(stdio: Stdio, handler: str) -> None:
    if stdio.stdin:
        raise StreamStartError(
            f"handler {handler!r} runs simulated processes, which read no input: "
            "stdin is not supported (exec or attach without -i works)"
        )


class FakeSession:
    """A Session fed by a simulated process (``feed`` its output, ``end`` it)."""

    def __init__(
        self,
        tty: bool,
        wait: Callable[[], Awaitable[ExitStatus]],
        release: Callable[[FakeSession], object],
    ) -> None:
        self._tty = tty
        self._wait = wait
        self._release = release
        self._queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
        self._ended = False
        self._closed = False

    def feed(self, stream: Stream, data: bytes) -> None:
        if self._ended or not data:
            return
        out = OutputStream.STDERR if stream is Stream.STDERR and not self._tty else None
        self._queue.put_nowait(OutputChunk(out or OutputStream.STDOUT, data))

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    async def write_stdin(self, data: bytes) -> None:
        raise BrokenPipeError("simulated processes read no input")

    async def close_stdin(self) -> None:
        return None

    async def read_output(self) -> OutputChunk | None:
        if self._closed:
            return None
        chunk = await self._queue.get()
        if chunk is None:
            self._queue.put_nowait(None)  # every later read sees the end too
        return chunk

    async def resize(self, size: TerminalSize) -> None:
        return None

    async def wait(self) -> int:
        return (await self._wait()).exit_code

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.end()
            self._release(self)
