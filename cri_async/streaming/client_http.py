"""The client's HTTP/1.1 upgrade requests: SPDY/3.1 as client-go sends it (POST, one
``X-Stream-Protocol-Version`` line per protocol) and WebSocket (wsproto's handshake)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from cri_async.streaming.remotecommand import PROTOCOL_HEADER

MAX_ERROR_BODY = 64 * 1024
READ_CHUNK = 64 * 1024


class UpgradeFailed(Exception):
    """The server answered the upgrade request with an HTTP error."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"upgrade refused: HTTP {status}: {body.strip()}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Upgraded:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: str  # what the server chose ("" when it named none)
    trailing: bytes  # bytes after the 101 that belong to the new protocol


async def _open(
    url: str, ssl_context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a streaming URL: {url!r}")
    tls = parts.scheme == "https"
    if tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    port = parts.port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=ssl_context if tls else None, limit=READ_CHUNK
    )
    host = parts.netloc.rsplit("@", 1)[-1]
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return reader, writer, host, target or "/"


async def upgrade_spdy(
    url: str, protocols: Sequence[str], ssl_context: ssl.SSLContext | None = None
) -> Upgraded:
    reader, writer, host, target = await _open(url, ssl_context)
    try:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", host),
            ("Content-Length", "0"),
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            *((PROTOCOL_HEADER, p) for p in protocols),
        ]
        writer.write(conn.send(h11.Request(method="POST", target=target, headers=headers)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        status, resp_headers, body = await _read_response(conn, reader)
        if status != 101:
            raise UpgradeFailed(status, body)
        chosen = next(
            (v.decode() for k, v in resp_headers if k.lower() == PROTOCOL_HEADER.lower().encode()),
            "",
        )
        trailing, _ = conn.trailing_data
        return Upgraded(reader, writer, chosen, bytes(trailing))
    except BaseException:
        writer.close()
        raise


async def _read_response(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[int, list[tuple[bytes, bytes]], str]:
    body = b""
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            data = await reader.read(READ_CHUNK)
            if not data:
                if status:
                    return status, headers, body.decode(errors="replace")
                raise ConnectionError("server closed the connection during the upgrade")
            conn.receive_data(data)
        elif isinstance(ev, h11.InformationalResponse) and ev.status_code == 101:
            return 101, list(ev.headers), ""
        elif isinstance(ev, h11.Response):
            status, headers = ev.status_code, list(ev.headers)
        elif isinstance(ev, h11.Data):
            body = (body + ev.data)[:MAX_ERROR_BODY]
        elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
            return status, headers, body.decode(errors="replace")


async def upgrade_websocket(
    url: str, subprotocols: Sequence[str], ssl_context: ssl.SSLContext | None = None
) -> tuple[Upgraded, Connection]:
    reader, writer, host, target = await _open(url, ssl_context)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=host, target=target, subprotocols=list(subprotocols))))
        await writer.drain()
        reject: RejectConnection | None = None
        body = b""
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                if reject is not None:
                    raise UpgradeFailed(reject.status_code, body.decode(errors="replace"))
                raise ConnectionError("server closed the connection during the upgrade")
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, AcceptConnection):
                    assert ws.connection is not None
                    return Upgraded(reader, writer, ev.subprotocol or "", b""), ws.connection
                if isinstance(ev, RejectConnection):
                    reject = ev
                    if not ev.has_body:
                        raise UpgradeFailed(ev.status_code, "")
                elif isinstance(ev, RejectData):
                    body = (body + bytes(ev.data))[:MAX_ERROR_BODY]
                    if ev.body_finished and reject is not None:
                        raise UpgradeFailed(reject.status_code, body.decode(errors="replace"))
    except BaseException:
        writer.close()
        raise
