"""kubelet's retry patterns: create de-duplication, cancelled calls, concurrent removes."""

import asyncio
from typing import Any

import pytest
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.core.model import Container, Sandbox
from cri_async.testing import CRIServer
from tests.support.poll import until

pytestmark = pytest.mark.socket


def slow_sandbox_create(srv: CRIServer, delay: float) -> list[str]:
    backend = srv.fake()
    real = backend.create_sandbox
    calls: list[str] = []

    async def slow(sb: Sandbox) -> Sandbox:
        calls.append(sb.id)
        await asyncio.sleep(delay)
        return await real(sb)

    backend.create_sandbox = slow  # type: ignore[method-assign]
    return calls


async def test_concurrent_creates_with_one_name_share_one_sandbox(srv: CRIServer) -> None:
    calls = slow_sandbox_create(srv, 0.3)
    cfg = pod_config("web", uid="u1")
    ids = await asyncio.gather(*(srv.client.run_pod(cfg) for _ in range(5)))
    assert len(set(ids)) == 1 and len(calls) == 1
    pods = await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert [p.id for p in pods.items] == [ids[0]]
    # Once done, the name is held: ALREADY_EXISTS naming the holder.
    with pytest.raises(GRPCError) as err:
        await srv.client.run_pod(cfg)
    assert err.value.status is Status.ALREADY_EXISTS
    assert ids[0] in str(err.value.message) and "web_default_u1_0" in str(err.value.message)
    # Another attempt number is another name.
    cfg.metadata.attempt = 1
    assert await srv.client.run_pod(cfg) != ids[0]


async def test_retry_after_client_deadline_gets_the_first_attempts_id(srv: CRIServer) -> None:
    calls = slow_sandbox_create(srv, 0.5)
    cfg = pod_config("web", uid="u2")
    # grpclib's client enforces its own deadline and raises TimeoutError.
    with pytest.raises(TimeoutError):
        await srv.client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=0.1)
    # kubelet retries with the same name: it joins (or collects) the first attempt.
    first = await srv.client.run_pod(cfg)
    assert len(calls) == 1
    # The retry got the id, so the first attempt is over: the name is now simply held.
    with pytest.raises(GRPCError) as err:
        await srv.client.run_pod(cfg)
    assert err.value.status is Status.ALREADY_EXISTS and first in str(err.value.message)


async def test_failed_create_rolls_back_and_frees_the_name(srv: CRIServer) -> None:
    cli = srv.client
    await cli.pull("busybox")
    pcfg = pod_config("web")
    pod = await cli.run_pod(pcfg)
    backend = srv.fake()
    real = backend.create_container
    deleted: list[str] = []
    real_delete = backend.delete_container

    async def broken(sb: Sandbox, c: Container, image: Any, **kw: Any) -> Container:
        await real(sb, c, image, **kw)
        raise OSError("disk on fire")

    async def spy_delete(c: Container) -> None:
        deleted.append(c.id)
        await real_delete(c)

    backend.create_container = broken  # type: ignore[method-assign]
    backend.delete_container = spy_delete  # type: ignore[method-assign]
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, container_config("c", "busybox"), pcfg)
    assert err.value.status is Status.INTERNAL and "disk on fire" in str(err.value.message)
    assert len(deleted) == 1  # backend state rolled back
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    backend.create_container = real  # type: ignore[method-assign]
    cid = await cli.create_container(pod, container_config("c", "busybox"), pcfg)
    assert cid != deleted[0]
    assert not (srv.fake().root / deleted[0]).exists()


async def test_concurrent_removes_and_stops_are_idempotent(srv: CRIServer) -> None:
    cli = srv.client
    await cli.pull("busybox")
    pcfg = pod_config("web")
    pod = await cli.run_pod(pcfg)
    cids = []
    for i in range(5):
        cid = await cli.create_container(
            pod, container_config(f"c{i}", "busybox", command=["sleep", "infinity"]), pcfg
        )
        await cli.start_container(cid)
        cids.append(cid)
    events: list[int] = []
    sub_ready = asyncio.Event()

    async def collect() -> None:
        async with cli.runtime.GetContainerEvents.open() as stream:
            await stream.send_message(pb.GetEventsRequest(), end=True)
            sub_ready.set()
            async for ev in stream:
                if ev.container_event_type == pb.CONTAINER_DELETED_EVENT:
                    events.append(1)

    task = asyncio.create_task(collect())
    await sub_ready.wait()
    assert srv.server is not None
    bus = srv.server.runtime.events
    await until(lambda: bus.subscribers == 1, what="the subscription on the server")
    calls = [
        cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod)) for _ in range(3)
    ] + [
        cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        for _ in range(3)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    # Stops racing the remove may find the pod gone (NOT_FOUND); nothing else may fail.
    for r in results:
        if isinstance(r, GRPCError):
            assert r.status is Status.NOT_FOUND
    await until(lambda: len(events) >= 6, what="6 DELETED events")
    task.cancel()
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    assert len(events) == 6  # 5 containers + the pod, each deleted exactly once
