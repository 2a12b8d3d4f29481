"""Port-forward over SPDY (portforward.k8s.io), WebSocket (v4 channels with the port
prefix) and SPDY tunnelled in WebSocket (KEP-4006): an HTTP server reached through a local
listener, 256 MiB through one connection intact, and a refused port reported in kubelet's
words."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from cri_async.streaming import client
from cri_async.streaming.client import Transport
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import PortForwardTarget
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket

TRANSPORTS = [
    pytest.param(Transport.SPDY, id="spdy"),
    pytest.param(Transport.WEBSOCKET, id="ws-v4"),
    pytest.param(Transport.SPDY_OVER_WEBSOCKET, id="spdy-in-ws"),
]
SPDY_TRANSPORTS = [
    pytest.param(Transport.SPDY, id="spdy"),
    pytest.param(Transport.SPDY_OVER_WEBSOCKET, id="spdy-in-ws"),
]
BIG = 256 * 1024 * 1024


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ")[1]
    body = b"hello from " + path
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    writer.write(body)
    await writer.drain()
    writer.close()


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB, not compressible by accident
    return (block * (size // len(block) + 1))[:size]


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends BIG bytes of a known pattern, then closes."""
    chunk = pattern(1024 * 1024)
    for _ in range(BIG // len(chunk)):
        writer.write(chunk)
        await writer.drain()
    writer.close()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hashes everything up to EOF, answers with the hex digest and its byte count."""
    h = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 20):
        h.update(data)
        n += len(data)
    writer.write(f"{n} {h.hexdigest()}".encode())
    await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def tcp() -> AsyncIterator[dict[str, int]]:
    servers = {
        "http": await asyncio.start_server(_http, "127.0.0.1", 0),
        "source": await asyncio.start_server(_source, "127.0.0.1", 0),
        "sink": await asyncio.start_server(_sink, "127.0.0.1", 0),
    }
    try:
        yield {k: s.sockets[0].getsockname()[1] for k, s in servers.items()}
    finally:
        for s in servers.values():
            s.close()
            await s.wait_closed()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_http_through_a_local_listener(
    server: StreamingServer, tcp: dict[str, int], transport: Transport
) -> None:
    port = tcp["http"]
    url = server.issue(PortForwardTarget("pod", (port,)))
    async with await client.open_port_forward(url, transport=transport, ports=[port]) as pf:
        local = await pf.listen(port)
        async with httpx.AsyncClient() as http:
            r = await asyncio.wait_for(http.get(f"http://127.0.0.1:{local}/index"), 30)
    assert r.status_code == 200
    assert r.text == "hello from /index"


@pytest.mark.parametrize("transport", SPDY_TRANSPORTS)
async def test_spdy_many_connections_on_one_session(
    server: StreamingServer, tcp: dict[str, int], transport: Transport
) -> None:
    port = tcp["http"]
    url = server.issue(PortForwardTarget("pod", ()))
    async with await client.open_port_forward(url, transport=transport) as pf:
        local = await pf.listen(port)
        async with httpx.AsyncClient() as http:
            rs = await asyncio.wait_for(
                asyncio.gather(*(http.get(f"http://127.0.0.1:{local}/{i}") for i in range(20))),
                60,
            )
    assert [r.text for r in rs] == [f"hello from /{i}" for i in range(20)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_256_mib_download_arrives_intact(
    server: StreamingServer, tcp: dict[str, int], transport: Transport
) -> None:
    port = tcp["source"]
    url = server.issue(PortForwardTarget("pod", (port,)))
    h = hashlib.sha256()
    n = 0
    async with await client.open_port_forward(url, transport=transport, ports=[port]) as pf:
        stream = await pf.connect(port)
        while data := await asyncio.wait_for(stream.read(), 60):
            h.update(data)
            n += len(data)
    assert n == BIG
    assert h.hexdigest() == hashlib.sha256(pattern(BIG)).hexdigest()


@pytest.mark.parametrize("transport", SPDY_TRANSPORTS)
async def test_256_mib_upload_arrives_intact_and_half_close_passes_through(
    server: StreamingServer, tcp: dict[str, int], transport: Transport
) -> None:
    port = tcp["sink"]
    url = server.issue(PortForwardTarget("pod", ()))
    chunk = pattern(1024 * 1024)
    async with await client.open_port_forward(url, transport=transport) as pf:
        stream = await pf.connect(port)
        for _ in range(BIG // len(chunk)):
            await asyncio.wait_for(stream.write(chunk), 60)
        await stream.close_write()  # the sink sees EOF, then answers
        answer = b""
        while data := await asyncio.wait_for(stream.read(), 60):
            answer += data
        assert await stream.error() == ""
    want = hashlib.sha256(b"".join(chunk for _ in range(BIG // len(chunk)))).hexdigest()
    assert answer.decode() == f"{BIG} {want}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refused_port_is_reported_on_the_error_stream(
    server: StreamingServer, transport: Transport
) -> None:
    port = free_port()
    url = server.issue(PortForwardTarget("pod-1", (port,)))
    async with await client.open_port_forward(url, transport=transport, ports=[port]) as pf:
        stream = await pf.connect(port)
        assert await asyncio.wait_for(stream.read(), 30) == b""
        message = await asyncio.wait_for(stream.error(), 30)
    assert message.startswith(f"error forwarding port {port} to pod pod-1, uid : ")
    assert message.endswith("connection refused")


async def test_spdy_stream_with_bad_port_is_reset(server: StreamingServer) -> None:
    url = server.issue(PortForwardTarget("pod", ()))
    async with await client.open_port_forward(url) as pf:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(pf.connect(0), 30)
        # the session is still usable afterwards
        with contextlib.suppress(ConnectionError):
            stream = await asyncio.wait_for(pf.connect(free_port()), 30)
            assert "error forwarding" in await asyncio.wait_for(stream.error(), 30)


async def test_backend_dials_only_requested_ports_over_websocket(
    server: StreamingServer, backend: HostStreamBackend, tcp: dict[str, int]
) -> None:
    ports = (tcp["http"], tcp["sink"])
    url = server.issue(PortForwardTarget("pod", ports))
    async with await client.open_port_forward(
        url, transport=Transport.WEBSOCKET, ports=ports
    ) as pf:
        stream = await pf.connect(tcp["sink"])
        await stream.write(b"abc")
        with pytest.raises(ValueError, match="not"):
            await pf.connect(12345)
    assert backend.forwards == 2  # one connection per requested port, opened at once
