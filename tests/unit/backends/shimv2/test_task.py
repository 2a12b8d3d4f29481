"""ShimClient against an in-process task service: what goes on the wire, what comes back.

The real shim is exercised in tests/integration/runtime/test_shimv2.py; here a ttrpc server
records requests, so field by field mapping, the namespace metadata, the v3 service name,
Wait's re-issued deadline and Shutdown's closed connection are checked precisely."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from cri_async.api.containerd.cgroups.v1 import metrics_pb2
from cri_async.api.containerd.task.v2 import shim_pb2 as pb
from cri_async.api.containerd.types.task import task_pb2
from cri_async.backends.shimv2.records import ExitInfo, Mount, ShimInfo, Stdio, TaskStatus
from cri_async.backends.shimv2.task import ShimClient
from cri_async.ttrpc import CallContext, Client, Server
from cri_async.ttrpc.errors import ConnectionClosed, NotFoundError


@dataclass
class FakeShim:
    server: Server
    path: str
    calls: list[tuple[str, Message, CallContext]] = field(default_factory=list)
    release_wait: asyncio.Event = field(default_factory=asyncio.Event)
    waits: asyncio.Queue[None] = field(default_factory=asyncio.Queue)


def _register(fake: FakeShim, service: str) -> None:
    def record(name: str, answer: Message):  # type: ignore[no-untyped-def]
        async def handler(req: Message, ctx: CallContext) -> Message:
            fake.calls.append((name, req, ctx))
            return answer

        return handler

    srv = fake.server
    srv.register(
        service, "Create", pb.CreateTaskRequest, record("Create", pb.CreateTaskResponse(pid=11))
    )
    srv.register(service, "Start", pb.StartRequest, record("Start", pb.StartResponse(pid=11)))
    srv.register(service, "Kill", pb.KillRequest, record("Kill", empty_pb2.Empty()))
    srv.register(service, "Exec", pb.ExecProcessRequest, record("Exec", empty_pb2.Empty()))
    srv.register(service, "Update", pb.UpdateTaskRequest, record("Update", empty_pb2.Empty()))
    srv.register(
        service, "Connect", pb.ConnectRequest,
        record("Connect", pb.ConnectResponse(shim_pid=100, task_pid=11, version="v")),
    )  # fmt: skip
    srv.register(
        service, "State", pb.StateRequest,
        record("State", pb.StateResponse(id="c", pid=11, status=task_pb2.RUNNING)),
    )  # fmt: skip
    metrics = metrics_pb2.Metrics()
    metrics.pids.current = 2
    srv.register(
        service, "Stats", pb.StatsRequest,
        record("Stats", pb.StatsResponse(stats=any_pb2.Any(
            type_url="io.containerd.cgroups.v1.Metrics", value=metrics.SerializeToString()))),
    )  # fmt: skip

    async def wait(req: pb.WaitRequest, ctx: CallContext) -> pb.WaitResponse:
        fake.waits.put_nowait(None)
        await fake.release_wait.wait()
        resp = pb.WaitResponse(exit_status=137)
        resp.exited_at.FromNanoseconds(5)
        return resp

    srv.register(service, "Wait", pb.WaitRequest, wait)

    async def delete(req: pb.DeleteRequest, ctx: CallContext) -> pb.DeleteResponse:
        raise NotFoundError("container not created")

    srv.register(service, "Delete", pb.DeleteRequest, delete)

    async def shutdown(req: pb.ShutdownRequest, ctx: CallContext) -> empty_pb2.Empty:
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, fake.server.close())
        await asyncio.sleep(3600)  # the connection goes before any answer
        return empty_pb2.Empty()

    srv.register(service, "Shutdown", pb.ShutdownRequest, shutdown)


@pytest_asyncio.fixture(params=[2, 3])
async def shim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeShim, ShimClient]]:
    d = tempfile.mkdtemp(prefix="task", dir="/tmp")
    fake = FakeShim(Server(), f"{d}/shim.sock")
    version = request.param
    _register(fake, f"containerd.task.v{version}.Task")
    await fake.server.start(fake.path)
    client = ShimClient(await Client.connect(fake.path), namespace="k8s.io", version=version)
    try:
        yield fake, client
    finally:
        await client.close()
        await fake.server.close()
        shutil.rmtree(d)


async def test_requests_carry_every_field_and_the_namespace(
    shim: tuple[FakeShim, ShimClient],
) -> None:
    fake, client = shim
    stdio = Stdio("/i", "/o", "/e")
    opts = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"")
    pid = await client.create(
        "c",
        "/b/c",
        stdio=stdio,
        rootfs=[Mount("overlay", "overlay", ("lowerdir=/l",))],
        options=opts,
    )
    assert pid == 11
    assert await client.start("c", "x") == 11
    await client.kill("c", 9, exec_id="x", all=True)
    await client.exec("c", "x2", {"args": ["ls"]}, stdio=Stdio(stdout="/o2", terminal=True))
    await client.update("c", {"memory": {"limit": 1}}, {"a": "b"})
    (create, c_ctx), (start, _), (kill, _), (exec_, _), (update, _) = (
        (req, ctx) for _, req, ctx in fake.calls
    )
    assert c_ctx.get("containerd-namespace-ttrpc") == "k8s.io"
    assert c_ctx.service == f"containerd.task.v{client.version}.Task"
    assert isinstance(create, pb.CreateTaskRequest)
    assert (create.id, create.bundle, create.stdin, create.stdout, create.stderr) == (
        "c", "/b/c", "/i", "/o", "/e"
    )  # fmt: skip
    assert [(m.type, list(m.options)) for m in create.rootfs] == [("overlay", ["lowerdir=/l"])]
    assert create.options.type_url == "containerd.runc.v1.Options"
    assert (start.id, start.exec_id) == ("c", "x")  # type: ignore[attr-defined]
    assert (kill.signal, kill.exec_id, kill.all) == (9, "x", True)  # type: ignore[attr-defined]
    assert isinstance(exec_, pb.ExecProcessRequest)
    assert exec_.spec.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Process"
    assert json.loads(exec_.spec.value) == {"args": ["ls"]}
    assert (exec_.terminal, exec_.stdout, exec_.stderr) == (True, "/o2", "")
    assert isinstance(update, pb.UpdateTaskRequest)
    assert update.resources.type_url.endswith("runtime-spec/1/LinuxResources")
    assert json.loads(update.resources.value) == {"memory": {"limit": 1}}
    assert dict(update.annotations) == {"a": "b"}


async def test_answers_become_records_and_errors_exceptions(
    shim: tuple[FakeShim, ShimClient],
) -> None:
    _, client = shim
    assert await client.connect("c") == ShimInfo(100, 11, "v")
    state = await client.state("c")
    assert (state.id, state.pid, state.status) == ("c", 11, TaskStatus.RUNNING)
    assert (await client.stats("c")).pids_current == 2
    with pytest.raises(NotFoundError, match="container not created"):
        await client.delete("c")


async def test_wait_outlives_its_call_deadline(shim: tuple[FakeShim, ShimClient]) -> None:
    fake, client = shim
    async with await Client.connect(fake.path) as conn:
        short = ShimClient(conn, namespace="k8s.io", version=client.version, wait_chunk=0.05)
        waiter = asyncio.create_task(short.wait("c"))
        for _ in range(3):  # each chunk's deadline passes and Wait is asked again
            await fake.waits.get()
        assert not waiter.done()
        fake.release_wait.set()
        assert await waiter == ExitInfo(11, 137, 5)  # pid from State, asked first


async def test_shutdown_counts_a_closed_connection_as_done(
    shim: tuple[FakeShim, ShimClient],
) -> None:
    _, client = shim
    await client.shutdown("c")
    await client.conn.wait_closed()
    with pytest.raises(ConnectionClosed):
        await client.state("c")


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version 4"):
        ShimClient(None, namespace="n", version=4)  # type: ignore[arg-type]
