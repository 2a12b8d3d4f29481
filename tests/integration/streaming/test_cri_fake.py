"""Exec/Attach/PortForward through a whole embedded server (the CRI socket, the RPCs, the
streaming server they point to) on the fake backend: what the URLs allow, token rules
through the RPCs, the fake's simulated sessions and what it refuses. No root needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.core.model import Container
from cri_async.core.ports import ExecResult
from cri_async.streaming import client
from cri_async.streaming.client import OutputStream, UpgradeFailed
from cri_async.streaming.remotecommand import OutcomeKind
from cri_async.testing import CRIServer
from tests.integration.streaming.conftest import SPDY, WS_V5, Variant

pytestmark = pytest.mark.socket

VARIANTS = [SPDY, WS_V5]


@pytest.fixture(params=VARIANTS, ids=[v.name for v in VARIANTS])
def v(request: pytest.FixtureRequest) -> Variant:
    variant: Variant = request.param
    return variant


class Node:
    def __init__(self, srv: CRIServer) -> None:
        self.srv = srv
        self.cli = srv.client

    async def pod(self) -> tuple[str, pb.PodSandboxConfig]:
        cfg = pod_config("p")
        return await self.cli.run_pod(cfg), cfg

    async def container(self, command: Sequence[str], name: str = "c") -> str:
        pod, cfg = await self.pod()
        cid = await self.cli.create_container(
            pod, container_config(name, "busybox", command=command), cfg
        )
        await self.cli.start_container(cid)
        return cid

    async def exec_url(self, cid: str, cmd: Sequence[str], **kw: bool) -> str:
        stdio = {"stdout": True, "stderr": True, **kw}
        req = pb.ExecRequest(container_id=cid, cmd=list(cmd), **stdio)
        return (await self.cli.runtime.Exec(req)).url


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with CRIServer(tmp_path) as srv:
        await srv.client.pull("busybox")
        yield Node(srv)


async def status_of(call: object) -> tuple[Status, str]:
    with pytest.raises(GRPCError) as err:
        await call  # type: ignore[misc]
    return err.value.status, str(err.value.message)


async def test_exec_streams_the_simulated_output_and_exit_code(node: Node, v: Variant) -> None:
    cid = await node.container(["sleep", "1000"])
    url = await node.exec_url(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    r = await asyncio.wait_for(client.run(url, **v.kw()), 30)
    assert (r.stdout, r.stderr, r.outcome.kind, r.exit_code) == (
        b"out\n",
        b"err\n",
        OutcomeKind.EXIT_CODE,
        3,
    )


async def test_exec_with_a_tty_merges_stderr(node: Node, v: Variant) -> None:
    cid = await node.container(["sleep", "1000"])
    url = await node.exec_url(cid, ["sh", "-c", "echo out; echo err >&2"], stderr=False, tty=True)
    r = await asyncio.wait_for(client.run(url, tty=True, **v.kw()), 30)
    assert (r.stdout, r.exit_code) == (b"out\nerr\n", 0)


async def test_exec_hooks_stream_too(node: Node, v: Variant) -> None:
    async def probe(c: Container, cmd: Sequence[str]) -> ExecResult:
        return ExecResult(0, f"probed {c.metadata.name}".encode(), b"")

    node.srv.fake().hooks["probe"] = probe
    cid = await node.container(["sleep", "1000"], name="app")
    r = await asyncio.wait_for(client.run(await node.exec_url(cid, ["probe"]), **v.kw()), 30)
    assert (r.stdout, r.exit_code) == (b"probed app", 0)


async def test_what_the_fake_cannot_do_is_refused(node: Node, v: Variant) -> None:
    cid = await node.container(["sleep", "1000"])
    r = await client.run(await node.exec_url(cid, ["no-such-program"]), **v.kw())
    assert r.outcome.kind is OutcomeKind.INTERNAL and "no-such-program" in r.outcome.message
    url = await node.exec_url(cid, ["sh"], stdin=True, stderr=False)
    r = await client.run(url, input=b"echo hi\n", stderr=False, **v.kw())
    assert r.outcome.kind is OutcomeKind.INTERNAL and "stdin is not supported" in r.outcome.message
    pod, _ = await node.pod()
    req = pb.PortForwardRequest(pod_sandbox_id=pod, port=[80])  # WebSocket: ports from here
    url = (await node.cli.runtime.PortForward(req)).url
    async with await client.open_port_forward(url, transport=v.transport, ports=[80]) as pf:
        stream = await pf.connect(80)
        assert await stream.read() == b""
        error = await stream.error()
    assert error.startswith(f"error forwarding port 80 to pod {pod}, uid : ")
    assert "no network namespace" in error


async def test_attach_sees_output_from_now_on(node: Node, v: Variant) -> None:
    cid = await node.container(["sh", "-c", "echo early; sleep 3; echo late; exit 4"])
    req = pb.AttachRequest(container_id=cid, stdout=True, stderr=True)
    url = (await node.cli.runtime.Attach(req)).url
    async with await client.open_command(url, **v.kw()) as s:
        chunk = await asyncio.wait_for(s.read(), 30)
        assert chunk is not None and (chunk.stream, chunk.data) == (OutputStream.STDOUT, b"late\n")
        assert await asyncio.wait_for(s.read(), 30) is None  # the container exited
        assert (await s.wait()).kind is OutcomeKind.SUCCESS


async def test_rpc_validation(node: Node) -> None:
    cid = await node.container(["sleep", "1000"])
    rt = node.cli.runtime
    cases = [
        (rt.Exec(pb.ExecRequest(cmd=["true"], stdout=True)), Status.INVALID_ARGUMENT),
        (rt.Exec(pb.ExecRequest(container_id=cid, stdout=True)), Status.INVALID_ARGUMENT),
        (
            rt.Exec(pb.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stderr=True)),
            Status.INVALID_ARGUMENT,
        ),
        (rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"])), Status.INVALID_ARGUMENT),
        (rt.Exec(pb.ExecRequest(container_id="nope", cmd=["true"], stdout=True)), Status.NOT_FOUND),
        (rt.Attach(pb.AttachRequest(container_id="nope", stdout=True)), Status.NOT_FOUND),
        (rt.PortForward(pb.PortForwardRequest(pod_sandbox_id="")), Status.INVALID_ARGUMENT),
        (rt.PortForward(pb.PortForwardRequest(pod_sandbox_id="nope")), Status.NOT_FOUND),
    ]
    for call, want in cases:
        assert (await status_of(call))[0] is want
    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    status, message = await status_of(
        rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    )
    assert status is Status.FAILED_PRECONDITION and "not running" in message
    pod, _ = await node.pod()
    await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    status, _ = await status_of(rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod)))
    assert status is Status.FAILED_PRECONDITION


async def expect_404(url: str, v: Variant) -> None:
    with pytest.raises(UpgradeFailed) as err:
        await asyncio.wait_for(client.run(url, **v.kw()), 30)
    assert err.value.status == 404


async def test_tokens_reused_expired_unknown_are_404(
    node: Node, v: Variant, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = await node.container(["sleep", "1000"])
    url = await node.exec_url(cid, ["echo", "hi"])
    assert (await client.run(url, **v.kw())).stdout == b"hi\n"
    await expect_404(url, v)  # reused
    await expect_404(url.rsplit("/", 1)[0] + "/AAAAAAAA", v)  # unknown
    stale = await node.exec_url(cid, ["echo", "hi"])
    assert node.srv.server is not None
    tokens = node.srv.server.streaming.tokens
    monkeypatch.setattr(tokens, "_clock", lambda: time.monotonic() + 61)  # a minute later
    await expect_404(stale, v)


async def test_the_1001st_outstanding_token_is_refused(node: Node) -> None:
    cid = await node.container(["sleep", "1000"])
    urls = [await node.exec_url(cid, ["echo", "hi"]) for _ in range(1000)]
    status, message = await status_of(
        node.cli.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    )
    assert status is Status.RESOURCE_EXHAUSTED and "1000" in message
    assert (await client.run(urls[0])).stdout == b"hi\n"  # redeeming one makes room
    await node.exec_url(cid, ["true"])
