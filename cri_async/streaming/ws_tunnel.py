"""SPDY tunnelled through WebSocket (KEP-4006), for port-forward: what client-go's
``NewSPDYOverWebsocketDialer`` speaks (``critest -websocket-portforward``, ``crictl
port-forward -r websocket``, kubectl through an apiserver that passes it on).

The client offers the subprotocol ``SPDY/3.1+portforward.k8s.io`` and the server echoes it.
After the upgrade the bytes of an ordinary SPDY/3.1 port-forward session travel in binary
messages; message boundaries mean nothing (a frame may span several), so each side reads
the messages as one byte stream. The session ends with a close frame 1000.

``TunnelReader``/``TunnelWriter`` give a ``WebSocketEndpoint`` the reader/writer shape a
``SpdyEndpoint`` runs on.
"""

from __future__ import annotations

from collections.abc import Sequence

from cri_async.streaming.remotecommand import PORT_FORWARD_PROTOCOL
from cri_async.streaming.ws_io import CLOSE_NORMAL, WebSocketClosed, WebSocketEndpoint

TUNNEL_PREFIX = "SPDY/3.1+"
PORT_FORWARD_TUNNEL = TUNNEL_PREFIX + PORT_FORWARD_PROTOCOL
CLOSE_GRACE = 0.5


def wants_tunnel(offered: Sequence[str], channel_protocols: Sequence[str]) -> bool:
    """Whether the client prefers the SPDY tunnel over every channel protocol we also
    speak (the first of either in its list wins)."""
    for name in (p.strip() for p in offered):
        if name == PORT_FORWARD_TUNNEL:
            return True
        if name and name in channel_protocols:
            return False
    return False


class TunnelReader:
    def __init__(self, ep: WebSocketEndpoint) -> None:
        self._ep = ep

    async def read(self, n: int = -1) -> bytes:
        """The next message's bytes (``n`` is a hint only); b"" once the tunnel closed."""
        while True:
            msg = await self._ep.receive()
            if msg is None:
                return b""
            if isinstance(msg, str):
                raise WebSocketClosed("text message in a SPDY tunnel")
            if msg:
                return msg


class TunnelWriter:
    def __init__(self, ep: WebSocketEndpoint) -> None:
        self._ep = ep

    def write(self, data: bytes) -> None:
        self._ep.send_nowait(data)

    async def drain(self) -> None:
        await self._ep.drain()

    def can_write_eof(self) -> bool:
        return False  # a WebSocket has no half-close

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        return None  # the close frame goes out in wait_closed

    async def wait_closed(self) -> None:
        await self._ep.aclose(CLOSE_NORMAL, grace=CLOSE_GRACE)

    @property
    def transport(self) -> TunnelWriter:
        return self

    def abort(self) -> None:
        self._ep.abort()
