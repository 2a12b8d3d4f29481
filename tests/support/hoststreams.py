"""A real StreamBackend on the host, for the streaming tests: exec runs a host process
(pipes, or a pty for tty), attach joins a long-running host process standing in for a
container, port-forward dials 127.0.0.1. Same contract as the conmon mapping: output is
what is written after attaching, close() of an exec kills its process group and reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Callable, Sequence

from cri_async.streaming.backend import (
    OutputChunk,
    OutputStream,
    Stdio,
    StreamStartError,
    TerminalSize,
)
from cri_async.streaming.queues import ClosableQueue

OUTPUT_QUEUE = 16
READ = 64 * 1024


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # killed by signal N: 128+N, as a shell reports


def _become_tty_owner() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class HostProcess:
    """A process with its output fanned out to subscribers, stdin from whoever writes."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.master: int | None = None  # the pty, for tty processes
        self.subscribers: set[ClosableQueue[OutputChunk]] = set()
        self.readers: list[asyncio.Task[None]] = []
        self.output_done = asyncio.Event()

    @classmethod
    async def start(cls, cmd: Sequence[str], stdio: Stdio) -> HostProcess:
        self = cls()
        try:
            if stdio.tty:
                await self._start_pty(cmd)
            else:
                await self._start_pipes(cmd, stdio)
        except OSError as e:
            raise StreamStartError(f"cannot run {list(cmd)}: {e}") from None
        return self

    async def _start_pipes(self, cmd: Sequence[str], stdio: Stdio) -> None:
        pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=pipe if stdio.stdin else null,
            stdout=pipe if stdio.stdout else null,
            stderr=pipe if stdio.stderr else null,
            start_new_session=True,
        )
        streams = [
            (self.proc.stdout, OutputStream.STDOUT),
            (self.proc.stderr, OutputStream.STDERR),
        ]
        live = [(r, k) for r, k in streams if r is not None]
        remaining = len(live)

        async def pump(reader: asyncio.StreamReader, kind: OutputStream) -> None:
            nonlocal remaining
            while data := await reader.read(READ):
                await self._publish(OutputChunk(kind, data))
            remaining -= 1
            if remaining == 0:
                self._end_output()

        self.readers = [asyncio.create_task(pump(r, k)) for r, k in live]
        if not live:
            self._end_output()

    async def _start_pty(self, cmd: Sequence[str]) -> None:
        master, slave = os.openpty()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                preexec_fn=_become_tty_owner,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master

        async def pump() -> None:
            while True:
                try:
                    data = os.read(master, READ)
                except BlockingIOError:
                    await self._ready(asyncio.get_running_loop().add_reader)
                    continue
                except OSError as e:  # EIO: every slave end is closed
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                await self._publish(OutputChunk(OutputStream.STDOUT, data))
            self._end_output()

        self.readers = [asyncio.create_task(pump())]

    async def _ready(self, register: Callable[..., object]) -> None:
        """Wait until the pty master is readable or writable (``register`` says which)."""
        assert self.master is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        register(self.master, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            if register == loop.add_reader:
                loop.remove_reader(self.master)
            else:
                loop.remove_writer(self.master)

    async def _publish(self, chunk: OutputChunk) -> None:
        for q in list(self.subscribers):
            await q.put(chunk)

    def _end_output(self) -> None:
        self.output_done.set()
        for q in self.subscribers:
            q.close()

    def subscribe(self) -> ClosableQueue[OutputChunk]:
        q: ClosableQueue[OutputChunk] = ClosableQueue(OUTPUT_QUEUE)
        if self.output_done.is_set():
            q.close()
        self.subscribers.add(q)
        return q

    async def write(self, data: bytes) -> None:
        if self.master is not None:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    await self._ready(asyncio.get_running_loop().add_writer)
                    continue
                view = view[n:]
            return
        assert self.proc is not None
        if self.proc.stdin is None:
            raise BrokenPipeError("stdin is not open")
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.master is not None:
            await self.write(b"\x04")  # a terminal's EOF is the EOF character
            return
        assert self.proc is not None
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await self.proc.stdin.wait_closed()

    def resize(self, size: TerminalSize) -> None:
        if self.master is not None:
            winsize = struct.pack("HHHH", size.height, size.width, 0, 0)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, winsize)

    async def wait(self) -> int:
        assert self.proc is not None
        return _exit_code(await self.proc.wait())

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        for t in self.readers:
            t.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.master is not None:
            os.close(self.master)
            self.master = None


class HostSession:
    """A Session on a HostProcess; ``owns`` (exec) means close() kills the process."""

    def __init__(self, process: HostProcess, owns: bool) -> None:
        self.process = process
        self.owns = owns
        self.queue = process.subscribe()
        self.closed = False
        self.taken = 0  # output bytes handed to the server so far

    async def write_stdin(self, data: bytes) -> None:
        await self.process.write(data)

    async def close_stdin(self) -> None:
        await self.process.close_stdin()

    async def read_output(self) -> OutputChunk | None:
        chunk = await self.queue.get()
        if chunk is not None:
            self.taken += len(chunk.data)
        return chunk

    async def resize(self, size: TerminalSize) -> None:
        self.process.resize(size)

    async def wait(self) -> int:
        return await self.process.wait()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.process.subscribers.discard(self.queue)
        self.queue.close()
        if self.owns:
            await self.process.kill()


class HostStreamBackend:
    def __init__(self) -> None:
        self.containers: dict[str, HostProcess] = {}
        self.execs: list[HostSession] = []
        self.forwards = 0

    async def add_container(
        self, container_id: str, cmd: Sequence[str], *, tty: bool = False
    ) -> HostProcess:
        stdio = Stdio(stdin=True, stdout=True, stderr=not tty, tty=tty)
        self.containers[container_id] = proc = await HostProcess.start(cmd, stdio)
        return proc

    async def exec(self, container_id: str, cmd: Sequence[str], stdio: Stdio) -> HostSession:
        if container_id not in self.containers:
            raise StreamStartError(f"container {container_id} is not running")
        session = HostSession(await HostProcess.start(cmd, stdio), owns=True)
        self.execs.append(session)
        return session

    async def attach(self, container_id: str, stdio: Stdio) -> HostSession:
        proc = self.containers.get(container_id)
        if proc is None:
            raise StreamStartError(f"container {container_id} is not running")
        return HostSession(proc, owns=False)

    async def port_forward(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.forwards += 1
        return await asyncio.open_connection("127.0.0.1", port)

    async def close(self) -> None:
        for proc in self.containers.values():
            await proc.kill()
        for session in self.execs:
            await session.close()


async def endless_output(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A port-forward target (``asyncio.start_server`` handler) that writes until the peer
    goes away: the far end of forwarded connections that a client abandons mid-stream."""
    chunk = b"y" * 65536
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
