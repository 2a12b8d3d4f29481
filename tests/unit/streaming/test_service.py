"""StreamingService against the real core (fake backend): what may get a URL, and what
the cached target then decides. Errors are domain errors mapped to gRPC statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib import Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.core.errors import CRIError
from cri_async.services.rpc import to_status
from cri_async.streaming.backend import Stdio
from cri_async.streaming.service import (
    AttachRequest,
    AttachTarget,
    ExecRequest,
    ExecTarget,
    PortForwardRequest,
    PortForwardTarget,
    StreamingService,
    Target,
)
from cri_async.streaming.tokens import TokenCache
from cri_async.testing import CRIServer


class CachingIssuer:
    """Issues URLs from a real token cache (the server's job, minus the socket)."""

    def __init__(self) -> None:
        self.tokens: TokenCache[Target] = TokenCache(lambda: 0.0)

    def issue(self, target: Target) -> str:
        return f"http://127.0.0.1:1/x/{self.tokens.insert(target)}"

    def redeem(self, url: str) -> Target | None:
        return self.tokens.consume(url.rsplit("/", 1)[1])


Env = tuple[CRIServer, StreamingService, CachingIssuer]


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with CRIServer(tmp_path) as srv:
        await srv.client.pull("busybox")
        assert srv.server is not None
        rt = srv.server.runtime
        issuer = CachingIssuer()
        yield srv, StreamingService(rt.containers, rt.sandboxes, issuer), issuer


async def new_container(srv: CRIServer, *, start: bool = True, stdin_once: bool = False) -> str:
    pcfg = pod_config("web")
    pod = await srv.client.run_pod(pcfg)
    cfg = container_config("app", "busybox", command=["sleep", "1000"])
    cfg.stdin = True
    cfg.stdin_once = stdin_once
    cid = await srv.client.create_container(pod, cfg, pcfg)
    if start:
        await srv.client.start_container(cid)
    return cid


def status_of(exc: pytest.ExceptionInfo[CRIError]) -> Status:
    return to_status(exc.value)


OUT = Stdio(stdout=True, stderr=True)


async def test_exec_url_carries_the_full_request(env: Env) -> None:
    srv, svc, issuer = env
    cid = await new_container(srv)
    url = svc.issue_exec(ExecRequest(cid[:12], ("ls", "-l"), OUT))
    assert issuer.redeem(url) == ExecTarget(cid, ("ls", "-l"), OUT)


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (ExecRequest("", ("ls",), OUT), "container_id"),
        (ExecRequest("x", (), OUT), "cmd"),
        (ExecRequest("x", ("ls",), Stdio(stdout=True, stderr=True, tty=True)), "tty"),
        (ExecRequest("x", ("ls",), Stdio()), "stdin, stdout, or stderr"),
    ],
)
async def test_exec_invalid_arguments(
    env: Env,
    req: ExecRequest,
    field: str,
) -> None:
    _, svc, _ = env
    with pytest.raises(CRIError, match=field) as err:
        svc.issue_exec(req)
    assert status_of(err) is Status.INVALID_ARGUMENT


async def test_exec_needs_a_running_container(env: Env) -> None:
    srv, svc, _ = env
    with pytest.raises(CRIError) as err:
        svc.issue_exec(ExecRequest("0123456789ab", ("ls",), OUT))
    assert status_of(err) is Status.NOT_FOUND
    cid = await new_container(srv, start=False)
    with pytest.raises(CRIError, match="created, not running") as err:
        svc.issue_exec(ExecRequest(cid, ("ls",), OUT))
    assert status_of(err) is Status.FAILED_PRECONDITION
    with pytest.raises(CRIError) as err:
        svc.issue_attach(AttachRequest(cid, OUT))
    assert status_of(err) is Status.FAILED_PRECONDITION


async def test_attach_takes_stdin_once_from_the_container(env: Env) -> None:
    srv, svc, issuer = env
    cid = await new_container(srv, stdin_once=True)
    stdio = Stdio(stdin=True, stdout=True, stderr=True)
    url = svc.issue_attach(AttachRequest(cid, stdio))
    assert issuer.redeem(url) == AttachTarget(cid, stdio, stdin_once=True)
    with pytest.raises(CRIError) as err:
        svc.issue_attach(AttachRequest(cid, Stdio()))
    assert status_of(err) is Status.INVALID_ARGUMENT


async def test_port_forward_needs_a_ready_pod(env: Env) -> None:
    srv, svc, issuer = env
    pod = await srv.client.run_pod(pod_config("db"))
    url = svc.issue_port_forward(PortForwardRequest(pod, (5432,)))
    assert issuer.redeem(url) == PortForwardTarget(pod, (5432,))
    for req, code in [
        (PortForwardRequest("", ()), Status.INVALID_ARGUMENT),
        (PortForwardRequest(pod, (0,)), Status.INVALID_ARGUMENT),
        (PortForwardRequest(pod, (70000,)), Status.INVALID_ARGUMENT),
        (PortForwardRequest("nope", ()), Status.NOT_FOUND),
    ]:
        with pytest.raises(CRIError) as err:
            svc.issue_port_forward(req)
        assert status_of(err) is code
    await srv.client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    with pytest.raises(CRIError, match="not ready") as err:
        svc.issue_port_forward(PortForwardRequest(pod, ()))
    assert status_of(err) is Status.FAILED_PRECONDITION
