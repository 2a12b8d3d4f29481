"""Processes exec'd in shim v2 tasks (ExecSync, and streaming sessions in the core's
``Session`` shape), and attaching to a container's output and stdin.

ExecSync: Exec + Start with a fresh exec id and FIFOs under the bundle, the output into an
``OutputCapture``; on timeout the process is killed, waited for and deleted, and the
caller gets DeadlineExceeded.

Exec: Exec + Start on the task API with a fresh exec id, its FIFOs under the bundle;
ResizePty and CloseIO name that exec. The output ends when the process has exited and
its FIFOs reached end of file (bounded: a background child holding the pipes does not
keep the session open for ever). Closing the session kills a process still running,
waits for it and deletes the exec.

Attach: the container's own FIFOs are ours (the backend reads them into the CRI log), so
an attach listens to that output from now on and writes to the container's stdin FIFO
(dropped when the container has none). Its output ends when the container's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from cri_async.core.errors import DeadlineExceeded, FailedPrecondition
from cri_async.core.ports import ExecResult
from cri_async.core.streams import OutputChunk, OutputStream, Stdio, StreamStartError, TerminalSize
from cri_async.logs.crilog import OutputCapture, Stream
from cri_async.ttrpc.errors import ConnectionClosed, NotFoundError, TTRPCError

from .stdio import ProcessIO
from .task import ShimClient
from .tasks import Task

__all__ = ["AttachSession", "ExecSession", "exec_sync", "finish_exec"]

log = logging.getLogger(__name__)

_STREAMS = {Stream.STDOUT: OutputStream.STDOUT, Stream.STDERR: OutputStream.STDERR}
DRAIN_TIMEOUT = 2.0
"""Seconds to wait for an exited process's output to reach end of file."""


async def finish_exec(
    client: ShimClient, cid: str, exec_id: str, waiter: asyncio.Future[Any], timeout: float
) -> None:
    """Kill an exec still running, wait for it (bounded) and delete it. Never raises for
    a process or shim that is already gone."""
    if not waiter.done():
        with contextlib.suppress(NotFoundError, ConnectionClosed):
            await client.kill(cid, signal.SIGKILL, exec_id=exec_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
    if not waiter.done():
        waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await waiter
    try:
        await client.delete(cid, exec_id)
    except (NotFoundError, ConnectionClosed):
        pass
    except TTRPCError as e:
        log.warning("deleting exec %s of %s: %s", exec_id, cid, e)


async def _start_and_wait(client: ShimClient, cid: str, exec_id: str) -> int:
    await client.start(cid, exec_id)
    return (await client.wait(cid, exec_id)).exit_status


async def exec_sync(
    client: ShimClient,
    cid: str,
    exec_id: str,
    process: dict[str, Any],
    workdir: Path,
    *,
    timeout: float | None,
    limit: int,
    kill_timeout: float,
) -> ExecResult:
    """Run ``process`` (no terminal, no stdin) and capture its output, each stream capped
    at ``limit`` bytes. DeadlineExceeded after ``timeout`` seconds (None: no limit)."""
    capture = OutputCapture(limit)
    io = ProcessIO.open(workdir)
    waiter: asyncio.Future[int] | None = None
    try:
        await io.start(capture.write)
        await client.exec(cid, exec_id, dict(process, terminal=False), stdio=io.stdio)
        waiter = asyncio.ensure_future(_start_and_wait(client, cid, exec_id))
        try:
            async with asyncio.timeout(timeout):
                code = await asyncio.shield(waiter)
        except TimeoutError:
            cmd = process.get("args")
            raise DeadlineExceeded(f"command {cmd!r} timed out after {timeout:g}s") from None
        with contextlib.suppress(TimeoutError):  # a background child may hold the pipes
            await asyncio.wait_for(io.wait_eof(), DRAIN_TIMEOUT)
    except TTRPCError as e:
        raise FailedPrecondition(f"exec in container {cid} failed: {e.message}") from None
    finally:
        if waiter is not None:
            await asyncio.shield(finish_exec(client, cid, exec_id, waiter, kill_timeout))
        else:
            with contextlib.suppress(TTRPCError):
                await asyncio.shield(client.delete(cid, exec_id))
        io.close()
        io.remove()
    return ExecResult(code, capture.output(Stream.STDOUT), capture.output(Stream.STDERR))


class ExecSession:
    """One process exec'd in a task for a streaming client."""

    def __init__(
        self, client: ShimClient, cid: str, exec_id: str, io: ProcessIO, *, timeout: float
    ) -> None:
        self._client = client
        self._cid = cid
        self._exec_id = exec_id
        self._io = io
        self._timeout = timeout
        self._queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
        self._waiter: asyncio.Future[int] | None = None
        self._stdin_closed = False
        self._closed = False

    @classmethod
    async def start(
        cls,
        client: ShimClient,
        cid: str,
        exec_id: str,
        process: dict[str, Any],
        stdio: Stdio,
        workdir: Path,
        *,
        timeout: float,
    ) -> ExecSession:
        """Exec and start ``process``. Raises StreamStartError (nothing left behind)."""
        process = dict(process, terminal=stdio.tty)
        io = ProcessIO.open(workdir, stdin=stdio.stdin, terminal=stdio.tty)
        session = cls(client, cid, exec_id, io, timeout=timeout)
        try:
            await io.start(session._write)
            await client.exec(cid, exec_id, process, stdio=io.stdio)
            try:
                await client.start(cid, exec_id)
            except BaseException:
                with contextlib.suppress(TTRPCError):
                    await asyncio.shield(client.delete(cid, exec_id))
                raise
        except BaseException as e:
            io.close()
            io.remove()
            if isinstance(e, TTRPCError):
                raise StreamStartError(f"cannot exec in container {cid}: {e.message}") from None
            raise
        session._waiter = asyncio.ensure_future(session._wait())
        return session

    def _write(self, stream: Stream, data: bytes) -> None:
        self._queue.put_nowait(OutputChunk(_STREAMS[stream], data))

    async def _wait(self) -> int:
        try:
            info = await self._client.wait(self._cid, self._exec_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await self._io.wait_eof()
            return info.exit_status
        finally:
            self._queue.put_nowait(None)

    async def write_stdin(self, data: bytes) -> None:
        try:
            await self._io.write_stdin(data)
        except ValueError as e:  # no stdin, or closed: the process takes no more input
            raise BrokenPipeError(str(e)) from None

    async def close_stdin(self) -> None:
        if self._stdin_closed or not self._io.has_stdin:
            return
        self._stdin_closed = True
        self._io.close_stdin()
        with contextlib.suppress(NotFoundError, ConnectionClosed):
            await self._client.close_io(self._cid, exec_id=self._exec_id)

    async def read_output(self) -> OutputChunk | None:
        if self._closed and self._queue.empty():
            return None
        return await self._queue.get()

    async def resize(self, size: TerminalSize) -> None:
        if self._io.terminal:
            with contextlib.suppress(NotFoundError):
                await self._client.resize_pty(
                    self._cid, size.width, size.height, exec_id=self._exec_id
                )

    async def wait(self) -> int:
        assert self._waiter is not None
        return await asyncio.shield(self._waiter)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        assert self._waiter is not None
        try:
            await finish_exec(self._client, self._cid, self._exec_id, self._waiter, self._timeout)
        finally:
            self._io.close()
            self._io.remove()
            self._queue.put_nowait(None)


class AttachSession:
    """One client attached to a running container's stdio."""

    def __init__(self, task: Task, stdio: Stdio) -> None:
        self._task = task
        self._stdio = stdio
        self._queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
        self._closed = False
        task.output.listen(self)

    # Listener (TaskOutput calls these)
    def write(self, stream: Stream, data: bytes) -> None:
        self._queue.put_nowait(OutputChunk(_STREAMS[stream], data))

    def end(self) -> None:
        self._queue.put_nowait(None)

    # Session
    async def write_stdin(self, data: bytes) -> None:
        if not self._task.io.has_stdin:
            return  # as containerd does: a container without stdin ignores input
        try:
            await self._task.io.write_stdin(data)
        except ValueError as e:  # the container's stdin was closed (stdin_once)
            raise BrokenPipeError(str(e)) from None

    async def close_stdin(self) -> None:
        """Close the container's stdin (the streaming server asks only for stdin_once)."""
        task = self._task
        if not task.io.has_stdin:
            return
        task.io.close_stdin()
        with contextlib.suppress(NotFoundError, ConnectionClosed):
            await task.client.close_io(task.id)

    async def read_output(self) -> OutputChunk | None:
        if self._closed and self._queue.empty():
            return None
        return await self._queue.get()

    async def resize(self, size: TerminalSize) -> None:
        if self._task.io.terminal:
            with contextlib.suppress(NotFoundError):
                await self._task.client.resize_pty(self._task.id, size.width, size.height)

    async def wait(self) -> int:
        return (await self._task.client.wait(self._task.id)).exit_status

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._task.output.unlisten(self)
            self._queue.put_nowait(None)
