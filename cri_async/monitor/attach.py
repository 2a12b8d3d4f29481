"""conmon's attach socket and control fifo, and a streaming session over them.

conmon listens on ``<dir>/attach`` (the container's bundle, or an exec session's
directory): an ``AF_UNIX SOCK_SEQPACKET`` socket. Each packet from conmon is one read of
the process's output with a 1-byte prefix, 2 for stdout and 3 for stderr (with a tty
everything is stdout). Packets to conmon are raw stdin, read into a 32 KiB buffer (a longer
packet would be cut, so input goes in smaller pieces). ``shutdown(SHUT_WR)`` makes conmon
close the process's stdin, unless the container runs with ``--leave-stdin-open``. conmon
writes output to every attached client with a blocking write, so a client that does not
read holds the process back rather than making anyone buffer.

Leaving takes care: conmon 2.1.6 frees a client's state when both directions are done and
then reads it again if the last one to end was the read side (``terminate_remote_sock``
after a failed write): a client that closes while conmon still writes to it can crash
conmon (a segfault, seen with dozens of attach clients dropped at once), and with it the
container's supervision. So a client ends its writing side first, keeps reading (conmon's
writes keep succeeding) while conmon handles that end, and only then closes (``leave``).

The path can exceed ``sun_path`` (108 bytes), so the socket is reached through an
``O_PATH`` descriptor of its directory (``/proc/self/fd/N/attach``). Beside it, the
``ctl`` fifo takes resizes and log reopens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from cri_async.core.streams import OutputChunk, OutputStream, TerminalSize

STDOUT_PREFIX = 2
STDERR_PREFIX = 3
PACKET_MAX = 65536
"""Receive size: conmon sends at most 8 KiB of output per packet (plus the prefix)."""
INPUT_CHUNK = 16 * 1024
"""Largest stdin packet we send (conmon's receive buffer is 32 KiB)."""
EOT = b"\x04"
"""A terminal's end-of-input character."""
CONNECT_TIMEOUT = 10.0
LINGER = 0.3
"""Seconds a leaving attach client keeps reading while the container's conmon handles the
end of its input (conmon answers within microseconds unless another client stalls it)."""


def write_ctl(directory: Path, message: str) -> None:
    """One message to conmon's control fifo ``<directory>/ctl`` (``"1 ROWS COLS\\n"``
    resizes the terminal, ``"2 0 0\\n"`` reopens the log). Non-blocking: OSError (ENXIO)
    when no conmon reads it."""
    fd = os.open(directory / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, message.encode())
    finally:
        os.close(fd)


def decode_packet(packet: bytes) -> OutputChunk | None:
    """One packet from conmon as output; None for an empty or unknown-prefix packet."""
    if len(packet) < 2:
        return None
    if packet[0] == STDOUT_PREFIX:
        return OutputChunk(OutputStream.STDOUT, packet[1:])
    if packet[0] == STDERR_PREFIX:
        return OutputChunk(OutputStream.STDERR, packet[1:])
    return None


def input_packets(data: bytes, size: int = INPUT_CHUNK) -> list[bytes]:
    """``data`` cut into packets conmon reads whole."""
    return [data[i : i + size] for i in range(0, len(data), size)]


class AttachSocket:
    """A connection to conmon's attach socket in ``directory``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, directory: Path, timeout: float = CONNECT_TIMEOUT) -> AttachSocket:
        """Raises OSError (FileNotFoundError, ConnectionRefusedError) if nobody listens.

        conmon listens with a backlog of 10 and a non-blocking AF_UNIX connect fails with
        EAGAIN while it is full (there is no readiness to wait for): retry with backoff."""
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        try:
            dirfd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
            try:
                async with asyncio.timeout(timeout):
                    delay = 0.001
                    while True:
                        try:
                            sock.connect(f"/proc/self/fd/{dirfd}/attach")
                            break
                        except BlockingIOError:
                            await asyncio.sleep(delay)
                            delay = min(2 * delay, 0.05)
            finally:
                os.close(dirfd)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def recv(self) -> bytes:
        """The next packet; b"" once conmon closed the connection."""
        if self._sock.fileno() < 0:
            return b""
        try:
            return await self._loop.sock_recv(self._sock, PACKET_MAX)
        except ConnectionResetError:
            return b""

    async def send(self, data: bytes) -> None:
        for packet in input_packets(data):
            await self._loop.sock_sendall(self._sock, packet)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()

    async def leave(self, linger: float) -> None:
        """Detach the way conmon survives (see the module's notes): end our writing side,
        read and drop what comes until conmon closes the connection (an exec's conmon does
        when it exits) or ``linger`` seconds have passed (a container's conmon never does),
        then close."""
        self.shutdown_write()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(linger):
                while await self.recv():
                    pass
        self.close()


class ConmonSession:
    """A streaming session (``cri_async.core.streams.Session``) on an attach socket.

    The parts that differ between attaching to a container and an exec'd process come
    in as callables: ``resize`` (the ``ctl`` fifo of that conmon), ``wait`` (the exit code)
    and ``release`` (what close() does instead of just leaving the socket: for exec, end
    the process and leave once its conmon is done)."""

    def __init__(
        self,
        sock: AttachSocket,
        *,
        tty: bool,
        resize: Callable[[int, int], Awaitable[None]],
        wait: Callable[[], Awaitable[int]],
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._sock = sock
        self._tty = tty
        self._resize = resize
        self._wait = wait
        self._release = release
        self._stdin_closed = False
        self._closed = False

    async def write_stdin(self, data: bytes) -> None:
        if self._stdin_closed:
            raise BrokenPipeError("stdin is closed")
        await self._sock.send(data)

    async def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        if self._tty:
            # A terminal's input ends with its EOF character; conmon's shutdown handling
            # only drops its copy of the terminal.
            with contextlib.suppress(OSError):
                await self._sock.send(EOT)
        self._sock.shutdown_write()

    async def read_output(self) -> OutputChunk | None:
        while packet := await self._sock.recv():
            chunk = decode_packet(packet)
            if chunk is not None:
                return chunk
        return None

    async def resize(self, size: TerminalSize) -> None:
        if self._tty and not self._closed:
            await self._resize(size.height, size.width)

    async def wait(self) -> int:
        return await self._wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            await self._release()  # it leaves the socket too
        else:
            await self._sock.leave(LINGER)
