"""The streaming server on a real loopback socket, with HostStreamBackend (real host
processes, pipes or a pty, real TCP dials) behind it, and our client in front. Each
transport variant real clients use is a parameter: SPDY (kubectl, crictl, kubelet's
proxy), WebSocket v4 (legacy clients) and v5 (crictl -r websocket, the apiserver)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
import pytest_asyncio

from cri_async.streaming.client import Transport
from cri_async.streaming.server import StreamingServer
from tests.support.hoststreams import HostStreamBackend


@dataclass(frozen=True)
class Variant:
    name: str
    transport: Transport
    protocols: Sequence[str] | None

    @property
    def can_close_stdin(self) -> bool:
        """v4 WebSocket cannot signal stdin EOF; SPDY (v2+) and WebSocket v5 can."""
        return self.transport is Transport.SPDY or self.protocols == ["v5.channel.k8s.io"]

    def kw(self) -> dict[str, object]:
        return {"transport": self.transport, "protocols": self.protocols}


SPDY = Variant("spdy", Transport.SPDY, None)
WS_V4 = Variant("ws-v4", Transport.WEBSOCKET, ["v4.channel.k8s.io"])
WS_V5 = Variant("ws-v5", Transport.WEBSOCKET, ["v5.channel.k8s.io"])
VARIANTS = [SPDY, WS_V4, WS_V5]


@pytest.fixture(params=VARIANTS, ids=[v.name for v in VARIANTS])
def variant(request: pytest.FixtureRequest) -> Variant:
    v: Variant = request.param
    return v


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[HostStreamBackend]:
    be = HostStreamBackend()
    await be.add_container("ctr", ["sleep", "infinity"])
    try:
        yield be
    finally:
        await be.close()


@pytest_asyncio.fixture
async def server(backend: HostStreamBackend) -> AsyncIterator[StreamingServer]:
    async with StreamingServer(backend) as srv:
        yield srv
