"""A client for the streaming URLs that Exec, Attach and PortForward return, over SPDY/3.1
or WebSocket, with the wire behaviour of client-go (and so of kubectl and crictl).

    result = await streaming.client.run(url, input=b"hi\\n", stdin=True)
    print(result.stdout, result.exit_code)

    async with await streaming.client.open_command(url, stdin=True, tty=True) as s:
        await s.resize(TerminalSize(80, 24))
        await s.write_stdin(b"exit 3\\n")
        outcome = await s.wait()

    async with await streaming.client.open_port_forward(url) as pf:
        stream = await pf.connect(80)
        server = await pf.listen(80)  # or a local port, like kubectl port-forward
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from cri_async.streaming import ws_channels as ch
from cri_async.streaming.backend import OutputChunk, OutputStream, Stdio, TerminalSize
from cri_async.streaming.client_http import UpgradeFailed
from cri_async.streaming.client_spdy import SpdyCommandSession, SpdyPortForwardSession
from cri_async.streaming.client_ws import WebSocketCommandSession, WebSocketPortForwardSession
from cri_async.streaming.remotecommand import (
    CLIENT_EXEC_PROTOCOLS,
    Outcome,
    OutcomeKind,
    StreamProtocol,
)

log = logging.getLogger("cri_async.streaming.client")

__all__ = [
    "CommandSession",
    "ExecResult",
    "ForwardStream",
    "OutputChunk",
    "OutputStream",
    "PortForward",
    "TerminalSize",
    "Transport",
    "UpgradeFailed",
    "open_command",
    "open_port_forward",
    "run",
]


class Transport(enum.Enum):
    SPDY = "spdy"
    WEBSOCKET = "websocket"
    # port-forward only: SPDY inside a WebSocket (client-go's tunnelling dialer, KEP-4006)
    SPDY_OVER_WEBSOCKET = "spdy-over-websocket"


class _Command(Protocol):
    @property
    def protocol_name(self) -> str: ...

    async def write_stdin(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def resize(self, size: TerminalSize) -> None: ...
    async def read(self) -> OutputChunk | None: ...
    async def wait(self) -> Outcome: ...
    async def close(self) -> None: ...
    def abort(self) -> None: ...


class CommandSession:
    """An exec or attach session. ``read()`` returns output chunks in arrival order (None
    once all output has ended); ``wait()`` the outcome the server reported."""

    def __init__(self, impl: _Command) -> None:
        self._impl = impl

    @property
    def protocol(self) -> str:
        """The negotiated subprotocol."""
        return self._impl.protocol_name

    async def write_stdin(self, data: bytes) -> None:
        await self._impl.write_stdin(data)

    async def close_stdin(self) -> None:
        await self._impl.close_stdin()

    async def resize(self, size: TerminalSize) -> None:
        await self._impl.resize(size)

    async def read(self) -> OutputChunk | None:
        return await self._impl.read()

    async def wait(self) -> Outcome:
        return await self._impl.wait()

    async def close(self) -> None:
        await self._impl.close()

    def abort(self) -> None:
        """Drop the connection without any goodbye, as a crashed client would."""
        self._impl.abort()

    async def __aenter__(self) -> CommandSession:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def open_command(
    url: str,
    *,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    transport: Transport = Transport.SPDY,
    protocols: Sequence[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    flow_control: bool = True,
) -> CommandSession:
    """Connect to an exec or attach URL. The stdio flags must match the CRI request's
    (the server counts streams from it). ``protocols`` overrides what is offered, in
    preference order (default: v5 first, as current client-go). ``flow_control=False``
    makes the SPDY client behave as Go's (no SPDY/3.1 windows, TCP back-pressure only)."""
    if transport is Transport.SPDY_OVER_WEBSOCKET:
        raise ValueError("SPDY over WebSocket carries port-forward only")
    stdio = Stdio(stdin=stdin, stdout=stdout, stderr=stderr and not tty, tty=tty)
    impl: _Command
    if transport is Transport.SPDY:
        offered = [StreamProtocol(p) for p in protocols] if protocols else CLIENT_EXEC_PROTOCOLS
        impl = await SpdyCommandSession.open(url, stdio, offered, ssl_context, flow_control)
    else:
        ws_offered = (
            [ch.ChannelProtocol(p) for p in protocols]
            if protocols
            else [ch.ChannelProtocol.V5, ch.ChannelProtocol.V4]
        )
        impl = await WebSocketCommandSession.open(url, stdio, ws_offered, ssl_context)
    return CommandSession(impl)


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    outcome: Outcome

    @property
    def exit_code(self) -> int | None:
        """0 on success, the code of a non-zero exit, None for an error before/around it."""
        if self.outcome.kind is OutcomeKind.SUCCESS:
            return 0
        if self.outcome.kind is OutcomeKind.EXIT_CODE:
            return self.outcome.exit_code
        return None


async def run(
    url: str,
    *,
    input: bytes | None = None,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    close_stdin: bool = True,
    transport: Transport = Transport.SPDY,
    protocols: Sequence[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ExecResult:
    """Run a whole session: send ``input`` (then EOF unless ``close_stdin`` is False),
    collect the output, return it with the outcome."""
    session = await open_command(
        url,
        stdin=stdin or input is not None,
        stdout=stdout,
        stderr=stderr,
        tty=tty,
        transport=transport,
        protocols=protocols,
        ssl_context=ssl_context,
    )
    async with session:
        out: dict[OutputStream, list[bytes]] = {OutputStream.STDOUT: [], OutputStream.STDERR: []}

        async def feed() -> None:
            if input:
                await session.write_stdin(input)
            if input is not None and close_stdin:
                await session.close_stdin()

        feeder = asyncio.create_task(feed())
        try:
            while (chunk := await session.read()) is not None:
                out[chunk.stream].append(chunk.data)
            outcome = await session.wait()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await feeder
    return ExecResult(
        b"".join(out[OutputStream.STDOUT]), b"".join(out[OutputStream.STDERR]), outcome
    )


class ForwardStream(Protocol):
    """One forwarded TCP connection."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close_write(self) -> None: ...
    async def error(self) -> str: ...
    def close(self) -> None: ...


class _Forwarder(Protocol):
    async def connect(self, port: int) -> ForwardStream: ...
    async def close(self) -> None: ...
    def abort(self) -> None: ...


class PortForward:
    def __init__(self, impl: _Forwarder) -> None:
        self._impl = impl
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, port: int) -> ForwardStream:
        """A connection to ``port`` in the pod (WebSocket: one per requested port)."""
        return await self._impl.connect(port)

    async def listen(self, remote_port: int, host: str = "127.0.0.1", port: int = 0) -> int:
        """Forward a local listening port to ``remote_port``, as ``kubectl port-forward``;
        returns the local port."""
        server = await asyncio.start_server(lambda r, w: self._local(r, w, remote_port), host, port)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def _local(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote_port: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        stream: ForwardStream | None = None
        try:
            stream = await self.connect(remote_port)

            async def up() -> None:
                assert stream is not None
                while data := await reader.read(32 * 1024):
                    await stream.write(data)
                await stream.close_write()

            up_task = asyncio.create_task(up())
            try:
                while data := await stream.read():
                    writer.write(data)
                    await writer.drain()
                if message := await stream.error():
                    log.warning("port-forward to %d failed: %s", remote_port, message)
            finally:
                up_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await up_task
        except (ConnectionError, OSError, UpgradeFailed) as e:
            log.warning("port-forward to %d: %s", remote_port, e)
        finally:
            if stream is not None:
                stream.close()
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._impl.close()

    def abort(self) -> None:
        """Drop the connection without any goodbye, as a crashed client would."""
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        self._impl.abort()

    async def __aenter__(self) -> PortForward:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def open_port_forward(
    url: str,
    *,
    transport: Transport = Transport.SPDY,
    ports: Sequence[int] = (),
    ssl_context: ssl.SSLContext | None = None,
    flow_control: bool = True,
) -> PortForward:
    """Connect to a port-forward URL. Over WebSocket, ``ports`` must be the CRI request's
    (each gets its connection right away); over SPDY (also tunnelled in a WebSocket) every
    ``connect`` names its port.
    ``flow_control`` as for ``open_command``."""
    impl: _Forwarder
    if transport is Transport.SPDY:
        impl = await SpdyPortForwardSession.open(url, ssl_context, flow_control)
    elif transport is Transport.SPDY_OVER_WEBSOCKET:
        impl = await SpdyPortForwardSession.open(url, ssl_context, flow_control, tunnel=True)
    else:
        if not ports:
            raise ValueError("WebSocket port-forward needs the ports of the request")
        impl = await WebSocketPortForwardSession.open(url, ports, ssl_context)
    return PortForward(impl)
