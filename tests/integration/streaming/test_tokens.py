"""The URL gate: unknown, reused, expired and wrong-kind tokens get 404 on both
transports; the handshake refusals kubelet's server makes (400/403/405); 1000 outstanding
tokens at most."""

from __future__ import annotations

import asyncio

import pytest

from cri_async.core.errors import ResourceExhausted
from cri_async.streaming import client
from cri_async.streaming.backend import Stdio
from cri_async.streaming.client import UpgradeFailed
from cri_async.streaming.client_http import upgrade_websocket
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import ExecTarget, PortForwardTarget
from tests.integration.streaming.conftest import Variant
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket

HELLO = ExecTarget("ctr", ("printf", "hello"), Stdio(stdout=True, stderr=True))


class FakeClock:
    """Injected time: the cache's notion of now, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def expect_404(url: str, variant: Variant) -> None:
    with pytest.raises(UpgradeFailed) as err:
        await asyncio.wait_for(client.run(url, **variant.kw()), 30)
    assert err.value.status == 404


async def test_unknown_token(server: StreamingServer, variant: Variant) -> None:
    await expect_404(server.base_url + "exec/AAAAAAAA", variant)


async def test_token_is_single_use(server: StreamingServer, variant: Variant) -> None:
    url = server.issue(HELLO)
    assert (await asyncio.wait_for(client.run(url, **variant.kw()), 30)).stdout == b"hello"
    await expect_404(url, variant)


async def test_token_expires_after_a_minute(backend: HostStreamBackend, variant: Variant) -> None:
    clock = FakeClock()
    async with StreamingServer(backend, clock=clock) as srv:
        fresh = srv.issue(HELLO)
        stale = srv.issue(HELLO)
        clock.now += 59.0
        assert (await asyncio.wait_for(client.run(fresh, **variant.kw()), 30)).stdout == b"hello"
        clock.now += 1.0
        await expect_404(stale, variant)


async def test_wrong_kind_is_404_and_burns_the_token(
    server: StreamingServer, variant: Variant
) -> None:
    url = server.issue(HELLO)
    await expect_404(url.replace("/exec/", "/attach/"), variant)
    await expect_404(url, variant)


async def test_1001st_outstanding_token_is_refused(server: StreamingServer) -> None:
    urls = [server.issue(HELLO) for _ in range(1000)]
    with pytest.raises(ResourceExhausted):
        server.issue(HELLO)
    # redeeming one makes room for one
    assert (await asyncio.wait_for(client.run(urls[0]), 30)).stdout == b"hello"
    server.issue(HELLO)
    with pytest.raises(ResourceExhausted):
        server.issue(HELLO)


async def raw_request(server: StreamingServer, head: str) -> tuple[int, str]:
    host, port = server.base_url.split("//")[1].rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    text = data.decode()
    return int(text.split(" ")[1]), text


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def test_spdy_without_protocol_header_is_400(server: StreamingServer) -> None:
    url = server.issue(HELLO)
    status, _ = await raw_request(
        server,
        f"POST {path_of(url)} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
    )
    assert status == 400


async def test_spdy_without_upgrade_headers_is_400(server: StreamingServer) -> None:
    url = server.issue(HELLO)
    status, _ = await raw_request(
        server,
        f"POST {path_of(url)} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
    )
    assert status == 400


async def test_unsupported_protocol_is_403_with_the_supported_list(
    server: StreamingServer,
) -> None:
    url = server.issue(HELLO)
    status, text = await raw_request(
        server,
        f"POST {path_of(url)} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        "X-Stream-Protocol-Version: v9.channel.k8s.io\r\n\r\n",
    )
    assert status == 403
    accepted = [
        line.split(": ", 1)[1]
        for line in text.split("\r\n")
        if line.lower().startswith("x-accepted-stream-protocol-versions:")
    ]
    assert accepted == [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ]


async def test_spdy_picks_the_first_supported_in_client_order(server: StreamingServer) -> None:
    # v5 is offered first but is never chosen over SPDY; v3 is the client's next choice.
    url = server.issue(ExecTarget("ctr", ("printf", "x"), Stdio(stdout=True)))
    async with await client.open_command(
        url, stderr=False, protocols=["v5.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"]
    ) as s:
        assert s.protocol == "v3.channel.k8s.io"
        while await s.read() is not None:
            pass


async def test_websocket_with_unknown_subprotocol_is_403(server: StreamingServer) -> None:
    url = server.issue(HELLO)
    with pytest.raises(UpgradeFailed) as err:
        await upgrade_websocket(url, ["v9.channel.k8s.io"])
    assert err.value.status == 403


async def test_websocket_post_is_405(server: StreamingServer) -> None:
    url = server.issue(HELLO)
    status, _ = await raw_request(
        server,
        f"POST {path_of(url)} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    assert status == 405


async def test_port_forward_token_on_exec_path_is_404(server: StreamingServer) -> None:
    url = server.issue(PortForwardTarget("pod", ()))
    status, _ = await raw_request(
        server,
        f"POST {path_of(url).replace('portforward', 'exec')} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 0\r\n\r\n",
    )
    assert status == 404
