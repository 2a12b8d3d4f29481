"""The HTTP/1.1 front door of the streaming server (h11): read one request head, route it,
and answer it with either an error response or a 101 that hands the socket to SPDY or
WebSocket. Routing and upgrade classification are pure functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
from wsproto.utilities import generate_accept_token

from cri_async.streaming.service import Route

MAX_REQUEST_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]  # names lowercased
    trailing: bytes  # bytes after the head: they belong to the upgraded protocol

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def tokens(self, name: str) -> list[str]:
        """A comma-separated header's elements, lowercased, over all its lines."""
        return [t.strip().lower() for v in self.header_values(name) for t in v.split(",")]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


class BadRequest(Exception):
    pass


def route(path: str, base_path: str) -> tuple[Route, str] | None:
    """``<base>/{exec,attach,portforward}/<token>`` → (route, token)."""
    prefix = "/" + base_path.strip("/")
    if prefix != "/":
        if not path.startswith(prefix + "/"):
            return None
        path = path[len(prefix) :]
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[2]:
        return None
    try:
        return Route(parts[1]), parts[2]
    except ValueError:
        return None


def is_websocket(req: Request) -> bool:
    return "websocket" in req.tokens("upgrade") and "upgrade" in req.tokens("connection")


def is_spdy(req: Request) -> bool:
    return "spdy/3.1" in req.tokens("upgrade") and "upgrade" in req.tokens("connection")


def websocket_accept(key: str) -> str:
    return generate_accept_token(key.encode("ascii", "replace")).decode("ascii")


async def read_request(reader: asyncio.StreamReader, timeout: float) -> Request | None:
    """The request head (and any request body bytes, which are discarded); None when the
    client closed first. Raises BadRequest for what h11 refuses, TimeoutError if slow."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    req: h11.Request | None = None
    async with asyncio.timeout(timeout):
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise BadRequest(str(e)) from None
            if ev is h11.NEED_DATA:
                data = await reader.read(MAX_REQUEST_HEAD)
                if not data and req is None:
                    return None
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.ConnectionClosed):
                return None
            elif ev is h11.PAUSED or isinstance(ev, h11.EndOfMessage):
                break
    assert req is not None
    trailing, _ = conn.trailing_data
    return Request(
        method=req.method.decode("ascii", "replace"),
        target=req.target.decode("ascii", "replace"),
        headers=tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in req.headers),
        trailing=bytes(trailing),
    )


def response(
    status: int, body: str = "", headers: Sequence[tuple[str, str]] = (), reason: str = ""
) -> bytes:
    """A complete, connection-closing response."""
    conn = h11.Connection(h11.SERVER)
    # h11 needs to have seen a request before it writes a response.
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    conn.next_event()
    raw = body.encode()
    head = [
        *headers,
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(raw))),
        ("Connection", "close"),
    ]
    out = conn.send(h11.Response(status_code=status, headers=head, reason=reason.encode()))
    out += conn.send(h11.Data(data=raw)) if raw else b""
    out += conn.send(h11.EndOfMessage())
    return out or b""


def switching_protocols(headers: Sequence[tuple[str, str]]) -> bytes:
    """The 101 answer, header names written exactly as given."""
    lines = ["HTTP/1.1 101 Switching Protocols", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
