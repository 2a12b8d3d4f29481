"""The HTTP/1.1 front door: routes, upgrade classification, the request head reader."""

from __future__ import annotations

import asyncio

import pytest

from cri_async.streaming import http1
from cri_async.streaming.service import Route


def test_routes() -> None:
    assert http1.route("/exec/abc", "") == (Route.EXEC, "abc")
    assert http1.route("/portforward/x-_Y", "") == (Route.PORT_FORWARD, "x-_Y")
    assert http1.route("/cri/attach/tok", "cri") == (Route.ATTACH, "tok")
    for bad in ("/exec/", "/exec", "/run/abc", "/exec/a/b", "exec/abc", "/attach/tok"):
        assert http1.route(bad, "cri" if bad == "/attach/tok" else "") is None


def req(*headers: tuple[str, str]) -> http1.Request:
    return http1.Request("GET", "/exec/t", tuple((k.lower(), v) for k, v in headers), b"")


def test_upgrade_classification() -> None:
    ws = req(("Connection", "keep-alive, Upgrade"), ("Upgrade", "WebSocket"))
    assert http1.is_websocket(ws)
    assert not http1.is_spdy(ws)
    spdy = req(("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"))
    assert http1.is_spdy(spdy)
    assert not http1.is_websocket(spdy)
    assert not http1.is_spdy(req(("Upgrade", "SPDY/3.1")))


def test_websocket_accept_key() -> None:
    # RFC 6455, section 1.3
    assert http1.websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_read_request_keeps_bytes_after_the_head() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(
        b"POST /exec/t?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: Upgrade\r\n"
        b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: a\r\nX-Stream-Protocol-Version: b\r\n"
        b"\r\n\x80\x03\x00\x01"
    )
    r = await http1.read_request(reader, 5)
    assert r is not None
    assert (r.method, r.path, r.trailing) == ("POST", "/exec/t", b"\x80\x03\x00\x01")
    assert r.header_values("x-stream-protocol-version") == ["a", "b"]


async def test_read_request_refuses_garbage_and_sees_eof() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"NOT HTTP\r\n\r\n")
    with pytest.raises(http1.BadRequest):
        await http1.read_request(reader, 5)
    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert await http1.read_request(empty, 5) is None


def test_responses() -> None:
    raw = http1.response(404, "404 page not found\n")
    assert raw.startswith(b"HTTP/1.1 404 ")
    assert raw.endswith(b"\r\n\r\n404 page not found\n")
    assert http1.switching_protocols([("Upgrade", "SPDY/3.1")]) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\n"
    )
