"""Client sessions over WebSocket channel protocols: exec/attach (v5 by default, which
alone can signal stdin EOF) and port-forward (``v4.channel.k8s.io``: the ports are those of
the CRI request, two channels each, each opened by the server with the port's 2 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from cri_async.streaming import ws_channels as ch
from cri_async.streaming.backend import OutputChunk, OutputStream, Stdio, TerminalSize
from cri_async.streaming.client_http import upgrade_websocket
from cri_async.streaming.queues import ClosableQueue, Inbox
from cri_async.streaming.remotecommand import Outcome, encode_resize, parse_status
from cri_async.streaming.ws_io import WebSocketEndpoint

IDLE_TIMEOUT = 4 * 3600.0
OUTPUT_QUEUE = 16


async def _endpoint(
    url: str, protocols: Sequence[ch.ChannelProtocol], ssl_context: ssl.SSLContext | None
) -> tuple[WebSocketEndpoint, ch.ChannelProtocol]:
    offered = [p.value for p in protocols if p is not ch.ChannelProtocol.NONE]
    up, conn = await upgrade_websocket(url, offered, ssl_context)
    try:
        protocol = ch.ChannelProtocol(up.protocol)
    except ValueError:
        up.writer.close()
        raise ConnectionError(f"server chose unknown subprotocol {up.protocol!r}") from None
    ep = WebSocketEndpoint(conn, up.reader, up.writer, idle_timeout=IDLE_TIMEOUT)
    ep.start()
    return ep, protocol


class WebSocketCommandSession:
    def __init__(self, ep: WebSocketEndpoint, protocol: ch.ChannelProtocol, stdio: Stdio) -> None:
        self.ep = ep
        self.protocol = protocol
        self.stdio = stdio
        self._output: ClosableQueue[OutputChunk] = ClosableQueue(OUTPUT_QUEUE)
        self._status = b""
        self._done = asyncio.Event()
        self._reader = asyncio.create_task(self._route())

    @property
    def protocol_name(self) -> str:
        return self.protocol.value

    @classmethod
    async def open(
        cls,
        url: str,
        stdio: Stdio,
        protocols: Sequence[ch.ChannelProtocol],
        ssl_context: ssl.SSLContext | None,
    ) -> WebSocketCommandSession:
        ep, protocol = await _endpoint(url, protocols, ssl_context)
        return cls(ep, protocol, stdio)

    async def _route(self) -> None:
        try:
            while (msg := await self.ep.receive()) is not None:
                item = ch.decode(self.protocol, msg, ch.EXEC_CHANNELS)
                if not isinstance(item, ch.ChannelData) or not item.data:
                    continue  # the empty "connected" message, or noise
                if item.channel == ch.STDOUT:
                    await self._output.put(OutputChunk(OutputStream.STDOUT, item.data))
                elif item.channel == ch.STDERR:
                    await self._output.put(OutputChunk(OutputStream.STDERR, item.data))
                elif item.channel == ch.ERROR:
                    self._status += item.data
        finally:
            self._done.set()
            self._output.close()

    async def write_stdin(self, data: bytes) -> None:
        if not self.stdio.stdin:
            raise ValueError("the session has no stdin")
        await self.ep.send(ch.encode(self.protocol, ch.STDIN, data))

    async def close_stdin(self) -> None:
        """Only v5 can say it; older protocols have no stdin EOF at all."""
        if self.protocol.close_signal and self.stdio.stdin:
            await self.ep.send(ch.encode_close(ch.STDIN))

    async def resize(self, size: TerminalSize) -> None:
        if self.stdio.tty:
            await self.ep.send(ch.encode(self.protocol, ch.RESIZE, encode_resize(size)))

    async def read(self) -> OutputChunk | None:
        return await self._output.get()

    async def wait(self) -> Outcome:
        await self._done.wait()
        return parse_status(self._status, self.protocol.json_status)

    def abort(self) -> None:
        self._reader.cancel()
        self.ep.abort()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ep.aclose(grace=1.0)


class WebSocketForwardStream:
    def __init__(self, session: WebSocketPortForwardSession, index: int, port: int) -> None:
        self.session = session
        self.index = index
        self.port = port
        self.inbox = Inbox()
        self.errors = Inbox()
        self.data_prefix = ch.PortPrefixReader(port)
        self.error_prefix = ch.PortPrefixReader(port)

    async def read(self) -> bytes:
        return await self.inbox.read()

    async def write(self, data: bytes) -> None:
        s = self.session
        await s.ep.send(ch.encode(s.protocol, 2 * self.index, data))

    async def close_write(self) -> None:
        """The WebSocket port-forward protocol has no half-close."""

    async def error(self) -> str:
        raw = b""
        while chunk := await self.errors.read():
            raw += chunk
        return raw.decode(errors="replace")

    def close(self) -> None:
        self.inbox.close()


class WebSocketPortForwardSession:
    def __init__(
        self, ep: WebSocketEndpoint, protocol: ch.ChannelProtocol, ports: Sequence[int]
    ) -> None:
        self.ep = ep
        self.protocol = protocol
        self.streams = [WebSocketForwardStream(self, i, p) for i, p in enumerate(ports)]
        self._taken: set[int] = set()
        self._reader = asyncio.create_task(self._route())

    @classmethod
    async def open(
        cls, url: str, ports: Sequence[int], ssl_context: ssl.SSLContext | None
    ) -> WebSocketPortForwardSession:
        ep, protocol = await _endpoint(
            url, (ch.ChannelProtocol.V4, ch.ChannelProtocol.V4_BASE64), ssl_context
        )
        return cls(ep, protocol, ports)

    async def _route(self) -> None:
        try:
            while (msg := await self.ep.receive()) is not None:
                item = ch.decode(self.protocol, msg, 2 * len(self.streams))
                if not isinstance(item, ch.ChannelData):
                    continue
                st = self.streams[item.channel // 2]
                if item.channel % 2 == 0:
                    data = st.data_prefix.feed(item.data)
                    if data:
                        await st.inbox.put(data)
                else:
                    data = st.error_prefix.feed(item.data)
                    if data:
                        await st.errors.put(data)
        finally:
            for st in self.streams:
                st.inbox.close()
                st.errors.close()

    async def connect(self, port: int) -> WebSocketForwardStream:
        """The channel pair of ``port`` (one per port and connection)."""
        for st in self.streams:
            if st.port == port and st.index not in self._taken:
                self._taken.add(st.index)
                return st
        raise ValueError(f"port {port} is not (or no longer) available on this connection")

    def abort(self) -> None:
        self._reader.cancel()
        self.ep.abort()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ep.aclose(grace=1.0)
