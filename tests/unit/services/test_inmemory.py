"""The services through grpclib's in-memory channel: no socket, same handlers."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib import GRPCError, Status
from grpclib.testing import ChannelFor

from cri_async.api.runtime.v1 import api_grpc
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.backends.fake.backend import FakeBackend
from cri_async.client import container_config, pod_config
from cri_async.core.runtime import Runtime
from cri_async.observe import Observer
from cri_async.registry.fake_store import CatalogImage, FakeImageStore
from cri_async.services.image import ImageService
from cri_async.services.runtime import RuntimeService
from cri_async.store.db import SQLiteStore


class Tracker:
    observer = Observer()
    max_request_bytes = 16 << 20

    def __init__(self, rpc_timeout: float) -> None:
        self.rpc_timeout = rpc_timeout
        self.inflight = 0
        self.peak = 0

    def begin(self) -> None:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)

    def end(self) -> None:
        self.inflight -= 1


class Stubs:
    def __init__(self, channel: object, tracker: Tracker) -> None:
        self.rt = api_grpc.RuntimeServiceStub(channel)  # type: ignore[arg-type]
        self.img = api_grpc.ImageServiceStub(channel)  # type: ignore[arg-type]
        self.tracker = tracker


@pytest_asyncio.fixture
async def stubs(tmp_path: Path) -> AsyncIterator[Stubs]:
    store = SQLiteStore(tmp_path / "state.db", sync="normal")
    await store.open()
    images = FakeImageStore(store, [CatalogImage("busybox")])
    runtime = Runtime(store, {"": FakeBackend("", tmp_path / "fake")}, images)
    await runtime.start()
    tracker = Tracker(rpc_timeout=1.0)
    services = [RuntimeService(runtime, tracker, "systemd"), ImageService(images, tracker)]
    async with ChannelFor(services) as channel:
        yield Stubs(channel, tracker)
    await runtime.close()
    await store.close()


async def running_sleeper(stubs: Stubs) -> str:
    await stubs.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="busybox")))
    cfg = pod_config("p")
    pod = (await stubs.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg))).pod_sandbox_id
    cid = (
        await stubs.rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod,
                config=container_config("c", "busybox", command=["sleep", "infinity"]),
            )
        )
    ).container_id
    await stubs.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return cid


async def test_lifecycle_in_memory(stubs: Stubs) -> None:
    cid = await running_sleeper(stubs)
    listed = await stubs.rt.ListContainers(pb.ListContainersRequest())
    assert [(c.id, c.state) for c in listed.containers] == [(cid, pb.CONTAINER_RUNNING)]
    rc = await stubs.rt.RuntimeConfig(pb.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == pb.SYSTEMD
    assert stubs.tracker.inflight == 0 and stubs.tracker.peak >= 1


async def test_server_caps_rpcs_without_a_client_deadline(stubs: Stubs) -> None:
    cid = await running_sleeper(stubs)
    with pytest.raises(GRPCError) as err:  # no client timeout; the server's 1 s cap applies
        await stubs.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "10"]))
    assert err.value.status is Status.DEADLINE_EXCEEDED
    assert stubs.tracker.inflight == 0


async def test_cached_list_messages_follow_state_changes(stubs: Stubs) -> None:
    pod = (
        await stubs.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("p")))
    ).pod_sandbox_id
    first = await stubs.rt.ListPodSandbox(pb.ListPodSandboxRequest())
    assert first.items[0].state == pb.SANDBOX_READY
    await stubs.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    second = await stubs.rt.ListPodSandbox(pb.ListPodSandboxRequest())
    assert second.items[0].state == pb.SANDBOX_NOTREADY
