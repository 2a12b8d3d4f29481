"""Client sessions over SPDY/3.1, as client-go's: exec/attach streams opened one at a
time (error, stdin, stdout, stderr, resize), each after the previous reply; port-forward
as (error, data) stream pairs tied by ``requestid``, over an HTTP/1.1 upgrade or tunnelled
in a WebSocket. The client announces SPDY/3.1 flow
control, so a server that honours it never has to buffer more than the window we grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from cri_async.streaming import spdy_frames as f
from cri_async.streaming.backend import OutputChunk, OutputStream, Stdio, TerminalSize
from cri_async.streaming.client_http import UpgradeFailed, upgrade_spdy, upgrade_websocket
from cri_async.streaming.queues import ClosableQueue
from cri_async.streaming.remotecommand import (
    PORT_FORWARD_PROTOCOL,
    Outcome,
    StreamProtocol,
    encode_resize,
    parse_status,
)
from cri_async.streaming.spdy_io import (
    ByteReader,
    ByteWriter,
    SpdyEndpoint,
    SpdyStream,
    StreamError,
)
from cri_async.streaming.spdy_session import Role, SpdyConnection
from cri_async.streaming.ws_io import WebSocketEndpoint
from cri_async.streaming.ws_tunnel import PORT_FORWARD_TUNNEL, TunnelReader, TunnelWriter

STREAM_WINDOW = 256 * 1024
SESSION_WINDOW = 4 * 1024 * 1024
PING_INTERVAL = 5.0  # as client-go: keeps idle sessions (and NATs) alive
IDLE_TIMEOUT = 4 * 3600.0
OUTPUT_QUEUE = 16


async def _endpoint(
    url: str, protocols: Sequence[str], ssl_context: ssl.SSLContext | None, flow_control: bool
) -> tuple[SpdyEndpoint, str]:
    up = await upgrade_spdy(url, protocols, ssl_context)
    return _client_endpoint(up.reader, up.writer, flow_control, up.trailing), up.protocol


async def _tunnel_endpoint(
    url: str, ssl_context: ssl.SSLContext | None, flow_control: bool
) -> SpdyEndpoint:
    """A port-forward SPDY session inside a WebSocket (``ws_tunnel``), as client-go's
    tunnelling dialer."""
    up, wsconn = await upgrade_websocket(url, [PORT_FORWARD_TUNNEL], ssl_context)
    if up.protocol != PORT_FORWARD_TUNNEL:
        up.writer.close()
        raise UpgradeFailed(403, f"the server chose {up.protocol!r}, not the SPDY tunnel")
    ws = WebSocketEndpoint(wsconn, up.reader, up.writer, idle_timeout=IDLE_TIMEOUT)
    ws.start()
    return _client_endpoint(TunnelReader(ws), TunnelWriter(ws), flow_control)


def _client_endpoint(
    reader: ByteReader, writer: ByteWriter, flow_control: bool, initial_data: bytes = b""
) -> SpdyEndpoint:
    """A started client SPDY session over ``reader``/``writer`` (a socket or a tunnel)."""
    conn = SpdyConnection(
        Role.CLIENT,
        initial_window=STREAM_WINDOW,
        session_window=SESSION_WINDOW,
        flow_control=flow_control,
    )
    ep = SpdyEndpoint(
        conn,
        reader,
        writer,
        idle_timeout=IDLE_TIMEOUT,
        initial_data=initial_data,
        stream_buffer=STREAM_WINDOW,
        connection_buffer=SESSION_WINDOW,
    )
    ep.start()
    return ep


async def _keepalive(ep: SpdyEndpoint) -> None:
    while not ep.closed.is_set():
        await asyncio.sleep(PING_INTERVAL)
        ep._call(lambda c: c.ping())


class SpdyCommandSession:
    def __init__(self, ep: SpdyEndpoint, protocol: StreamProtocol) -> None:
        self.ep = ep
        self.protocol = protocol
        self.streams: list[SpdyStream] = []
        self.error: SpdyStream | None = None
        self.stdin: SpdyStream | None = None
        self.resize_stream: SpdyStream | None = None
        self._output: ClosableQueue[OutputChunk] = ClosableQueue(OUTPUT_QUEUE)
        self._open_outputs = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._status: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    @property
    def protocol_name(self) -> str:
        return self.protocol.value

    @classmethod
    async def open(
        cls,
        url: str,
        stdio: Stdio,
        protocols: Sequence[StreamProtocol],
        ssl_context: ssl.SSLContext | None,
        flow_control: bool = True,
    ) -> SpdyCommandSession:
        ep, chosen = await _endpoint(url, [p.value for p in protocols], ssl_context, flow_control)
        # A 101 without the header means the server predates negotiation: v1.
        protocol = StreamProtocol(chosen) if chosen else StreamProtocol.V1
        self = cls(ep, protocol)
        try:
            await self._open_streams(stdio)
        except BaseException:
            await self.close()
            raise
        return self

    async def _open(self, kind: str) -> SpdyStream:
        st = await self.ep.open_stream((("streamtype", kind),))
        self.streams.append(st)
        return st

    async def _open_streams(self, stdio: Stdio) -> None:
        self.error = await self._open("error")
        if stdio.stdin:
            self.stdin = await self._open("stdin")
        outputs = []
        if stdio.stdout:
            outputs.append((await self._open("stdout"), OutputStream.STDOUT))
        if stdio.stderr and not stdio.tty:
            outputs.append((await self._open("stderr"), OutputStream.STDERR))
        if stdio.tty and self.protocol.supports_resize:
            self.resize_stream = await self._open("resize")
        self._open_outputs = len(outputs)
        for st, kind in outputs:
            self._tasks.append(asyncio.create_task(self._pump(st, kind)))
        self._tasks.append(asyncio.create_task(self._read_status(self.error)))
        self._tasks.append(asyncio.create_task(_keepalive(self.ep)))
        if not outputs:
            self._output.close()

    async def _pump(self, st: SpdyStream, kind: OutputStream) -> None:
        while data := await st.read():
            await self._output.put(OutputChunk(kind, data))
        self._open_outputs -= 1
        if self._open_outputs == 0:
            self._output.close()

    async def _read_status(self, st: SpdyStream) -> None:
        raw = b""
        while data := await st.read():
            raw += data
        self._status.set_result(raw)

    # -- the session API ------------------------------------------------------------------
    async def write_stdin(self, data: bytes) -> None:
        if self.stdin is None:
            raise ValueError("the session has no stdin")
        await self.stdin.write(data)

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.end()
            await self.ep.drain()

    async def resize(self, size: TerminalSize) -> None:
        if self.resize_stream is not None:
            await self.resize_stream.write(encode_resize(size))

    async def read(self) -> OutputChunk | None:
        return await self._output.get()

    async def wait(self) -> Outcome:
        raw = await self._status
        return parse_status(raw, self.protocol.json_status)

    def abort(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.ep.abort()

    async def close(self) -> None:
        """RST what we have not FIN'd, GOAWAY, close (what client-go does at the end)."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for st in self.streams:
            st.reset()
        await self.ep.aclose(grace=0.0)
        if not self._status.done():
            self._status.cancel()


class SpdyForwardStream:
    """One forwarded connection: a data stream and its error stream."""

    def __init__(self, data: SpdyStream, error: SpdyStream) -> None:
        self.data = data
        self.error_stream = error

    async def read(self) -> bytes:
        return await self.data.read()

    async def write(self, data: bytes) -> None:
        await self.data.write(data)

    async def close_write(self) -> None:
        self.data.end()
        await self.data.endpoint.drain()

    async def error(self) -> str:
        """What the server reported on the error stream (empty: no error)."""
        raw = b""
        while chunk := await self.error_stream.read():
            raw += chunk
        return raw.decode(errors="replace")

    def close(self) -> None:
        self.data.reset()
        self.error_stream.reset()


class SpdyPortForwardSession:
    def __init__(self, ep: SpdyEndpoint) -> None:
        self.ep = ep
        self._next_request = 0
        self._lock = asyncio.Lock()
        self._keepalive = asyncio.create_task(_keepalive(ep))

    @classmethod
    async def open(
        cls,
        url: str,
        ssl_context: ssl.SSLContext | None,
        flow_control: bool = True,
        *,
        tunnel: bool = False,
    ) -> SpdyPortForwardSession:
        """``tunnel``: inside a WebSocket (KEP-4006) rather than an HTTP/1.1 upgrade."""
        if tunnel:
            return cls(await _tunnel_endpoint(url, ssl_context, flow_control))
        ep, _ = await _endpoint(url, [PORT_FORWARD_PROTOCOL], ssl_context, flow_control)
        return cls(ep)

    async def connect(self, port: int) -> SpdyForwardStream:
        async with self._lock:  # pairs are opened back to back, as client-go does
            rid = str(self._next_request)
            self._next_request += 1
            headers: f.Headers = (("streamtype", "error"), ("port", str(port)), ("requestid", rid))
            error = await self.ep.open_stream(headers)
            error.end()  # the client never writes on its error stream
            try:
                data = await self.ep.open_stream(
                    (("streamtype", "data"), ("port", str(port)), ("requestid", rid))
                )
            except (StreamError, TimeoutError):
                error.reset()
                raise
        return SpdyForwardStream(data, error)

    def abort(self) -> None:
        self._keepalive.cancel()
        self.ep.abort()

    async def close(self) -> None:
        self._keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keepalive
        for st in list(self.ep.streams.values()):
            st.reset()
        await self.ep.aclose(grace=0.0)
