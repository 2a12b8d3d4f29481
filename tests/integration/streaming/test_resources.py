"""Nothing outlives a session: 200 sessions abandoned mid-stream (the client's socket just
dies) leave no task, file descriptor or process behind; a client that stops reading
holds the producer back instead of making the server buffer."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cri_async.streaming import client
from cri_async.streaming.backend import Stdio
from cri_async.streaming.client import Transport
from cri_async.streaming.client_http import upgrade_spdy
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import ExecTarget, PortForwardTarget
from cri_async.streaming.spdy_io import SpdyEndpoint
from cri_async.streaming.spdy_session import Role, SpdyConnection
from tests.integration.runtime.conftest import until
from tests.integration.streaming.conftest import SPDY, WS_V4, WS_V5, Variant
from tests.support.hoststreams import HostStreamBackend, endless_output
from tests.support.procs import open_fds

pytestmark = pytest.mark.socket

STREAMING = ExecTarget(
    "ctr", ("sh", "-c", "printf started; exec sleep 1000"), Stdio(stdin=True, stdout=True)
)


def children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                out.add(int(d))
    return out


async def abandon_exec(srv: StreamingServer, variant: Variant) -> None:
    s = await client.open_command(srv.issue(STREAMING), stdin=True, stderr=False, **variant.kw())
    chunk = await s.read()
    assert chunk is not None
    assert chunk.data == b"started"
    s.abort()


async def abandon_forward(srv: StreamingServer, port: int, transport: Transport) -> None:
    pf = await client.open_port_forward(
        srv.issue(PortForwardTarget("pod", (port,))), transport=transport, ports=[port]
    )
    stream = await pf.connect(port)
    assert await stream.read()
    pf.abort()


async def abandon_setup(srv: StreamingServer) -> None:
    """A client that dies between its first stream and the rest."""
    up = await upgrade_spdy(srv.issue(STREAMING), ["v4.channel.k8s.io"])
    ep = SpdyEndpoint(SpdyConnection(Role.CLIENT), up.reader, up.writer, idle_timeout=60)
    ep.start()
    await ep.open_stream((("streamtype", "error"),))
    ep.abort()


async def settle(
    srv: StreamingServer, backend: HostStreamBackend, fd0: int, kids0: set[int]
) -> None:
    """Poll until the server has let go of everything."""
    async with asyncio.timeout(60):
        while True:
            done = (
                srv.connections == 0
                and all(s.closed for s in backend.execs)
                and children() <= kids0
                and open_fds() <= fd0
            )
            if done:
                return
            await asyncio.sleep(0.05)


async def test_200_abandoned_sessions_leave_nothing(
    server: StreamingServer, backend: HostStreamBackend
) -> None:
    source = await asyncio.start_server(endless_output, "127.0.0.1", 0)
    port = source.sockets[0].getsockname()[1]
    try:
        await abandon_exec(server, SPDY)  # warm-up: lazily created loop resources
        await settle(server, backend, 10**6, children())
        tasks0 = len(asyncio.all_tasks())
        fd0 = open_fds()
        kids0 = children()
        work = (
            [abandon_exec(server, SPDY) for _ in range(60)]
            + [abandon_exec(server, WS_V5) for _ in range(40)]
            + [abandon_exec(server, WS_V4) for _ in range(40)]
            + [abandon_forward(server, port, Transport.SPDY) for _ in range(20)]
            + [abandon_forward(server, port, Transport.WEBSOCKET) for _ in range(20)]
            + [abandon_setup(server) for _ in range(20)]
        )
        for i in range(0, len(work), 50):
            await asyncio.wait_for(asyncio.gather(*work[i : i + 50]), 60)
        assert len(backend.execs) == 1 + 140 + 0  # the setup-abandoned never started
        await settle(server, backend, fd0, kids0)
        assert len(asyncio.all_tasks()) <= tasks0
        assert open_fds() <= fd0
        assert children() == kids0
        assert all(
            s.process.proc is not None and s.process.proc.returncode is not None
            for s in backend.execs
        )
    finally:
        source.close()
        await source.wait_closed()


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


@pytest.mark.parametrize(
    ("transport", "flow_control"),
    [
        pytest.param(Transport.SPDY, True, id="spdy-windows"),
        pytest.param(Transport.SPDY, False, id="spdy-go-like"),
        pytest.param(Transport.WEBSOCKET, True, id="websocket"),
    ],
)
async def test_a_client_that_stops_reading_stalls_the_producer(
    server: StreamingServer, backend: HostStreamBackend, transport: Transport, flow_control: bool
) -> None:
    total = 64 * 1024 * 1024
    url = server.issue(
        ExecTarget("ctr", ("head", "-c", str(total), "/dev/zero"), Stdio(stdout=True))
    )
    async with await client.open_command(
        url, stderr=False, transport=transport, flow_control=flow_control
    ) as s:
        first = await asyncio.wait_for(s.read(), 30)
        assert first is not None
        proc = backend.execs[-1].process.proc
        assert proc is not None
        session = backend.execs[-1]
        # Poll until either the producer finished (everything was buffered somewhere: the
        # bug this test is for) or it sits blocked on its pipe while the server takes
        # nothing more, over consecutive polls.
        seen: list[int] = []

        def stalled_or_done() -> bool:
            if proc.returncode is not None:
                return True
            seen.append(session.taken if "pipe_write" in wchan(proc.pid) else -1)
            return len(seen) >= 10 and len(set(seen[-10:])) == 1 and seen[-1] >= 0

        await until(stalled_or_done, timeout=60, interval=0.02)
        assert proc.returncode is None
        # socket buffers on both sides plus our bounded queues, far below the 64 MiB
        assert session.taken < 24 * 1024 * 1024
        got = len(first.data)
        while (chunk := await asyncio.wait_for(s.read(), 30)) is not None:
            got += len(chunk.data)
        assert (await s.wait()).kind.value == "success"
    assert got == total


async def test_server_close_ends_live_sessions_and_their_processes(
    backend: HostStreamBackend,
) -> None:
    quiet = ExecTarget("ctr", ("sleep", "1000"), Stdio(stdin=True, stdout=True))
    srv = StreamingServer(backend)
    await srv.start()
    sessions = [
        await client.open_command(srv.issue(quiet), stdin=True, stderr=False, **v.kw())
        for v in (SPDY, WS_V4, WS_V5)
    ]
    await until(lambda: len(backend.execs) == 3, timeout=30)
    await srv.close()
    assert srv.connections == 0
    for s in backend.execs:
        assert s.closed
        assert s.process.proc is not None
        assert s.process.proc.returncode is not None  # killed and reaped
    for session in sessions:
        assert await asyncio.wait_for(session.read(), 30) is None
        await session.close()
