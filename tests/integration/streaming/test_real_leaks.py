"""Nothing outlives an abandoned session on a real runtime: 200 exec, tty exec, attach and
port-forward (SPDY, WebSocket, SPDY in WebSocket) sessions on runc, each dropped
mid-stream (the client's socket just dies), leave no task, file descriptor, exec'd
process, conmon, session directory or socket link behind, and the containers they used
keep running.

Needs root, runc, conmon and the registry tools (skips locally, fails under CI=true)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.backends.runc import RuncBackend
from cri_async.cgroupfs import CGROUP_ROOT
from cri_async.streaming import client
from tests.integration.conftest import wait_state
from tests.integration.streaming.conftest import SPDY, WS_V5, Variant
from tests.integration.streaming.realnode import TUNNEL, Node, real_node
from tests.support.hoststreams import endless_output
from tests.support.poll import until
from tests.support.procs import open_fds, processes_mentioning

pytestmark = [pytest.mark.root, pytest.mark.registry]

PORT = 9000


def procs(cgroups_path: str) -> set[int]:
    text = (CGROUP_ROOT / "pids" / cgroups_path.strip("/") / "cgroup.procs").read_text()
    return {int(p) for p in text.split()}


async def abandon_exec(node: Node, cid: str, v: Variant) -> None:
    cmd = ["sh", "-c", "printf started; exec sleep 1000"]
    url = await node.exec_url(cid, cmd, stdin=True, stderr=False)
    s = await client.open_command(url, stdin=True, stderr=False, **v.kw())
    chunk = await s.read()
    assert chunk is not None and chunk.data == b"started"
    s.abort()


async def abandon_tty_exec(node: Node, cid: str, v: Variant) -> None:
    url = await node.exec_url(cid, ["sh"], stdin=True, stderr=False, tty=True)
    s = await client.open_command(url, stdin=True, tty=True, **v.kw())
    await s.write_stdin(b"echo ready\n")
    got = b""
    while b"ready\r\n" not in got:
        chunk = await s.read()
        assert chunk is not None
        got += chunk.data
    s.abort()


async def abandon_attach(node: Node, cid: str, v: Variant) -> None:
    s = await client.open_command(await node.attach_url(cid), **v.kw())
    chunk = await s.read()
    assert chunk is not None, await s.wait()
    s.abort()


async def abandon_forward(node: Node, pod: str, v: Variant) -> None:
    url = await node.forward_url(pod, [PORT])
    pf = await client.open_port_forward(url, transport=v.transport, ports=[PORT])
    stream = await pf.connect(PORT)
    assert await stream.read()
    pf.abort()


async def test_200_abandoned_sessions_leave_nothing(tmp_path: Path, busybox_ref: str) -> None:
    async with real_node("runc", tmp_path, busybox_ref) as node:
        pod = await node.pod("leaks")
        sleeper = await node.container(pod, "sleeper", ["sleep", "100000"])
        ticker = await node.container(
            pod, "ticker", ["sh", "-c", "while :; do echo tick; sleep 0.02; done"]
        )
        # The forwarded connections' far end: endless_output output, from a server in the pod's
        # netns with a real backlog (busybox `nc -ll` listens with a backlog of 2).
        source = await node.serve_in_pod(pod[0], PORT, endless_output)
        server = node.srv.server
        assert server is not None
        backend = server.backends[""]
        assert isinstance(backend, RuncBackend)
        record = server.runtime.ctx.containers.peek(sleeper)
        assert record is not None
        cgroup = record.backend_info["cgroupsPath"]
        sessions = backend.bundles.sessions(sleeper)
        socket_dir = Path(backend.bundles.conmon.socket_dir)

        def state() -> tuple[int, int, set[int], int, int, int]:
            return (
                server.streaming.connections,
                len(processes_mentioning("--exec-attach")),
                procs(cgroup),
                len(os.listdir(sessions)) if sessions.exists() else 0,
                len(os.listdir(socket_dir)),
                open_fds(),
            )

        # Warm-up: one of each, so that lazily made loop resources count as the baseline.
        for warm in (
            abandon_exec(node, sleeper, SPDY),
            abandon_tty_exec(node, sleeper, WS_V5),
            abandon_attach(node, ticker, SPDY),
            abandon_forward(node, pod[0], WS_V5),
        ):
            await warm

        def idle() -> tuple[int, int, set[int], int, int, int] | None:
            s = state()
            return s if s[0] == 0 and s[1] == 0 and s[3] == 0 else None

        await until(idle, timeout=60, what="the warm-up sessions to be gone")
        base = state()
        tasks0 = len(asyncio.all_tasks())

        work: list[Callable[[], Awaitable[None]]] = (
            [lambda: abandon_exec(node, sleeper, SPDY)] * 50
            + [lambda: abandon_exec(node, sleeper, WS_V5)] * 30
            + [lambda: abandon_tty_exec(node, sleeper, SPDY)] * 20
            + [lambda: abandon_attach(node, ticker, SPDY)] * 30
            + [lambda: abandon_attach(node, ticker, WS_V5)] * 30
            + [lambda: abandon_forward(node, pod[0], SPDY)] * 10
            + [lambda: abandon_forward(node, pod[0], TUNNEL)] * 10
            + [lambda: abandon_forward(node, pod[0], WS_V5)] * 20
        )
        assert len(work) == 200
        for i in range(0, len(work), 40):
            await asyncio.wait_for(asyncio.gather(*(w() for w in work[i : i + 40])), 120)

        def settled() -> bool:
            conns, conmons, inside, dirs, links, n_fds = state()
            return (
                conns == 0
                and conmons == 0
                and inside == base[2]
                and dirs == 0
                and links == base[4]
                and n_fds <= base[5]
            )

        try:
            await until(settled, timeout=120, interval=0.1)
        except AssertionError:
            raise AssertionError(f"left after the sessions: {state()}, before: {base}") from None
        assert len(asyncio.all_tasks()) <= tasks0
        for cid in (sleeper, ticker):
            await wait_state(node.cli, cid, pb.CONTAINER_RUNNING)  # the containers live on
            # ... and so do their conmons: dropped attach clients must not crash them.
            conmon_pid = int((backend.bundles.bundle(cid) / "conmon.pid").read_text())
            os.kill(conmon_pid, 0)
        r = await node.cli.exec_sync(sleeper, ["echo", "still here"])
        assert r.stdout == b"still here\n"
        source.close()
        await source.wait_closed()
