"""Older protocol versions and the connection's time limits: v1-v3 over SPDY, the base64
WebSocket protocols, the idle timeout and the stream-creation timeout."""

from __future__ import annotations

import asyncio

import pytest

from cri_async.config import StreamingConfig
from cri_async.streaming import client
from cri_async.streaming.backend import Stdio
from cri_async.streaming.client import Transport
from cri_async.streaming.client_http import upgrade_spdy
from cri_async.streaming.remotecommand import OutcomeKind
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import ExecTarget
from cri_async.streaming.spdy_io import SpdyEndpoint
from cri_async.streaming.spdy_session import Role, SpdyConnection
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket

FAIL = ExecTarget("ctr", ("sh", "-c", "printf out; exit 3"), Stdio(stdout=True, stderr=True))


async def test_v2_and_v3_report_failures_as_text(server: StreamingServer) -> None:
    for version in ("v2.channel.k8s.io", "v3.channel.k8s.io"):
        res = await asyncio.wait_for(client.run(server.issue(FAIL), protocols=[version]), 30)
        assert res.stdout == b"out"
        assert res.outcome.kind is OutcomeKind.INTERNAL  # plain text: no exit code on the wire
        assert res.outcome.message == "command terminated with non-zero exit code: exit status 3"


async def test_v1_loses_the_error_as_kubelet_does(server: StreamingServer) -> None:
    res = await asyncio.wait_for(client.run(server.issue(FAIL), protocols=["channel.k8s.io"]), 30)
    assert res.stdout == b"out"
    # v1 servers reset the error stream right after setup: the failure never arrives
    assert res.outcome.kind is OutcomeKind.SUCCESS


@pytest.mark.parametrize(
    ("protocol", "exit_code"),
    [("v4.base64.channel.k8s.io", 3), ("base64.channel.k8s.io", None)],
)
async def test_base64_websocket(
    server: StreamingServer, protocol: str, exit_code: int | None
) -> None:
    res = await asyncio.wait_for(
        client.run(server.issue(FAIL), transport=Transport.WEBSOCKET, protocols=[protocol]), 30
    )
    assert res.stdout == b"out"
    assert res.exit_code == exit_code  # v4 carries the code; the old one only text


@pytest.mark.parametrize(
    "transport",
    [pytest.param(Transport.SPDY, id="spdy"), pytest.param(Transport.WEBSOCKET, id="ws")],
)
async def test_idle_connection_is_closed_and_its_process_killed(
    backend: HostStreamBackend, transport: Transport
) -> None:
    cfg = StreamingConfig(idle_timeout=0.5)
    quiet = ExecTarget("ctr", ("sleep", "1000"), Stdio(stdout=True))
    async with StreamingServer(backend, cfg) as srv:
        s = await client.open_command(srv.issue(quiet), stderr=False, transport=transport)
        async with s:
            assert await asyncio.wait_for(s.read(), 30) is None  # the server hung up
        proc = backend.execs[-1].process.proc
        assert proc is not None
        assert await asyncio.wait_for(proc.wait(), 30) != 0  # killed, not finished


async def test_client_that_never_opens_all_streams_is_dropped(
    backend: HostStreamBackend,
) -> None:
    cfg = StreamingConfig(stream_creation_timeout=0.3)
    async with StreamingServer(backend, cfg) as srv:
        target = ExecTarget("ctr", ("true",), Stdio(stdin=True, stdout=True))
        up = await upgrade_spdy(srv.issue(target), ["v4.channel.k8s.io"])
        ep = SpdyEndpoint(SpdyConnection(Role.CLIENT), up.reader, up.writer, idle_timeout=60)
        async with ep:
            await ep.open_stream((("streamtype", "error"),))
            await asyncio.wait_for(ep.closed.wait(), 30)
            assert ep.goaway_received
        assert backend.execs == []  # the process never started
