"""The limits one client connection gets: request message size (``server.
max_request_bytes``) and concurrent streams (``server.max_concurrent_streams``), over a
real unix socket."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import pytest_asyncio
from grpclib import GRPCError, Status
from h2.settings import SettingCodes

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.config import Config
from cri_async.testing import CRIServer
from tests.support.poll import until_sync

pytestmark = pytest.mark.socket

LIMIT = 64 << 10
STREAMS = 4


@pytest_asyncio.fixture
async def srv(tmp_path: Path) -> AsyncIterator[CRIServer]:
    base = Config()
    server = dataclasses.replace(
        base.server, max_request_bytes=LIMIT, max_concurrent_streams=STREAMS
    )
    async with CRIServer(tmp_path, config=dataclasses.replace(base, server=server)) as s:
        yield s


def status_request(size: int) -> pb.ContainerStatusRequest:
    """A request of exactly ``size`` bytes on the wire (without the 5-byte prefix)."""
    n = size - 4  # tag, and a 3-byte length for these sizes
    req = pb.ContainerStatusRequest(container_id="x" * n)
    assert req.ByteSize() == size
    return req


async def test_request_size_limit_is_exact(srv: CRIServer) -> None:
    rt = srv.client.runtime
    with pytest.raises(GRPCError) as err:
        await rt.ContainerStatus(status_request(LIMIT))
    assert err.value.status is Status.NOT_FOUND  # read and answered
    assert len(str(err.value.message)) < 200  # the huge id is not echoed back
    with pytest.raises(GRPCError) as err:
        await rt.ContainerStatus(status_request(LIMIT + 1))
    assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert f"{LIMIT + 1} bytes; server.max_request_bytes allows {LIMIT}" in str(err.value.message)
    assert (await srv.client.version()).runtime_name == "cri-async"  # same connection


def connect(path: Path) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def advertised_streams(sock: socket.socket, conn: h2.connection.H2Connection) -> int:
    """The server's SETTINGS_MAX_CONCURRENT_STREAMS once its settings have arrived."""

    def read() -> int | None:
        for e in conn.receive_data(sock.recv(65535)):
            if isinstance(e, h2.events.RemoteSettingsChanged):
                changed = e.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                if changed is not None and changed.new_value != 100:  # h2's initial value
                    return int(changed.new_value)
        sock.sendall(conn.data_to_send())
        return None

    return until_sync(read, timeout=10, what="the server's stream limit")


def open_subscription(sock: socket.socket, conn: h2.connection.H2Connection) -> None:
    """A GetContainerEvents call: a stream that stays open until the client ends it."""
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/runtime.v1.RuntimeService/GetContainerEvents"),
            (":authority", "cri"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    conn.send_data(sid, b"\0\0\0\0\0")  # an empty GetEventsRequest
    sock.sendall(conn.data_to_send())


def hostile_client(path: Path) -> None:
    """Opens as many streams as allowed, then one more, ignoring the limit; returns once
    the server has closed the connection."""
    sock, conn = connect(path)
    try:
        assert advertised_streams(sock, conn) == STREAMS
        for _ in range(STREAMS):  # within the limit: served
            open_subscription(sock, conn)
        conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10 * STREAMS
        conn.remote_settings.acknowledge()
        open_subscription(sock, conn)

        def closed() -> bool:
            return sock.recv(65535) == b""

        until_sync(closed, timeout=10, what="the server to close the connection")
    finally:
        sock.close()


async def test_streams_per_connection_are_advertised_and_enforced(srv: CRIServer) -> None:
    # In a thread: the server runs on this event loop.
    await asyncio.to_thread(hostile_client, srv.socket_path)
    # Other clients are served as before.
    assert (await srv.client.version()).runtime_name == "cri-async"
