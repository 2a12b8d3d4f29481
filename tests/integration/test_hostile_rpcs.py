"""Hostile gRPC input: every RPC of RuntimeService, ImageService and Admin gets random and
adversarial messages (``tests/support/hostile.py``) and raw bytes that are not messages,
over the real unix socket of a ``cri-async serve`` process. Each call must answer within
its deadline with OK or a clear client-error status (never INTERNAL or UNKNOWN, never a
dropped connection), the server must still answer Version afterwards, and no id or name
may become a path outside the server's directories: every path-like value ends in
``escape``, and no ``escape`` may appear anywhere above them.

The fake backend serves every RPC; a runc-backed server gets RunPodSandbox and
CreateContainer, the RPCs whose ids and names reach the host (pins, pod directories,
cgroups, bundles, conmon). Hypothesis runs a fixed number of examples per RPC,
derandomized, so a CI run is repeatable and takes seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpclib import GRPCError, Status
from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.encoding.base import CodecBase
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cri_async import linux
from cri_async.api.admin.v1 import admin_pb2
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from tests.support import images as im
from tests.support.hostile import ESCAPE, Hostile
from tests.support.procs import processes_mentioning
from tests.support.registry import LocalRegistry

from .conftest import require
from .test_restart import Proc

pytestmark = [pytest.mark.socket, pytest.mark.subprocess]

# Answers a hostile request may get: each says what was wrong with it (or that the
# operation does not exist here). INTERNAL, UNKNOWN, UNAVAILABLE... would mean a bug.
CLIENT_ERRORS = {
    Status.INVALID_ARGUMENT,
    Status.NOT_FOUND,
    Status.ALREADY_EXISTS,
    Status.FAILED_PRECONDITION,
    Status.RESOURCE_EXHAUSTED,
    Status.OUT_OF_RANGE,
    Status.UNIMPLEMENTED,
    Status.DEADLINE_EXCEEDED,  # ExecSync's own timeout, or an answer that takes that long
}
MAX_REQUEST = 1 << 20  # the servers' server.max_request_bytes; the huge strings are 2 MiB
RPC_TIMEOUT = 5.0  # the servers' server.rpc_timeout: every call answers within it
CALL_TIMEOUT = RPC_TIMEOUT + 10  # the client's own bound: beyond it, the server hung
SUBSCRIPTIONS = {"GetContainerEvents"}  # unbounded by design: the client ends them


class RawCodec(CodecBase):
    """Sends bytes as they are (requests that are not messages), messages serialized."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message if isinstance(message, bytes) else bytes(message.SerializeToString())

    def decode(self, data: bytes, message_type: Any) -> Any:
        return message_type.FromString(data)


def judge(method: MethodDescriptor, e: GRPCError) -> Status:
    """A client error that says what was wrong, or fail."""
    assert e.status in CLIENT_ERRORS, f"{method.name}: {e.status.name}: {e.message}"
    assert e.message, f"{method.name}: {e.status.name} without a message"
    return e.status


def methods(*services: tuple[Any, str]) -> list[MethodDescriptor]:
    return [m for mod, name in services for m in mod.DESCRIPTOR.services_by_name[name].methods]


ALL_METHODS = methods((pb, "RuntimeService"), (pb, "ImageService"), (admin_pb2, "Admin"))
HOST_METHODS = [m for m in ALL_METHODS if m.name in ("RunPodSandbox", "CreateContainer")]


@dataclass
class Target:
    """A server process, an event loop to call it from, and the paths an escape would
    reach: every ancestor of the server's directories (``dirs``) and the ``host`` dir."""

    proc: Proc
    loop: asyncio.AbstractEventLoop
    channel: Channel
    dirs: tuple[Path, ...]
    host: Path

    def call(self, method: MethodDescriptor, request: Message | bytes) -> Status:
        return self.loop.run_until_complete(self._call(method, request))

    async def _call(self, method: MethodDescriptor, request: Message | bytes) -> Status:
        req_type = GetMessageClass(method.input_type)
        reply_type = GetMessageClass(method.output_type)
        path = f"/{method.containing_service.full_name}/{method.name}"
        timeout = 0.5 if method.name in SUBSCRIPTIONS else CALL_TIMEOUT
        try:
            if method.server_streaming:
                await UnaryStreamMethod(self.channel, path, req_type, reply_type)(
                    request,  # type: ignore[arg-type]
                    timeout=timeout,
                )
            else:
                await UnaryUnaryMethod(self.channel, path, req_type, reply_type)(
                    request,  # type: ignore[arg-type]
                    timeout=timeout,
                )
        except GRPCError as e:
            return judge(method, e)
        except TimeoutError:
            assert method.name in SUBSCRIPTIONS, f"{method.name}: no answer in {timeout}s"
        except Exception as e:  # the connection went away: the server dropped or crashed
            raise AssertionError(f"{method.name}: {e!r}\n{self.proc.log()[-3000:]}") from None
        return Status.OK

    def check(self) -> None:
        """Still serving, nothing escaped."""
        assert self.proc.proc is not None and self.proc.proc.poll() is None, self.proc.log()
        self.loop.run_until_complete(version(self.proc.sock))
        above = {a for d in self.dirs for a in (d, *d.parents)}
        escaped = [str(a / ESCAPE) for a in above if (a / ESCAPE).exists()]
        escaped += [str(p) for p in self.host.rglob(f"*{ESCAPE}*")]
        assert not escaped, f"paths made from ids or names: {escaped}"


async def version(sock: Path) -> None:
    async with CRIClient(sock) as client:
        await asyncio.wait_for(client.version(), 10)


async def raw_channel(sock: Path) -> Channel:
    return Channel(path=str(sock), codec=RawCodec())


async def cri_client(sock: Path) -> CRIClient:
    return CRIClient(sock)


def serve(tmp: Path, run_root: Path | None = None, **proc: Any) -> Iterator[Target]:
    root = tmp / "srv"
    host = tmp / "host"
    root.mkdir()
    host.mkdir()
    p = Proc(
        root,
        run_root=run_root,
        log_level="info",
        server=f"max_request_bytes = {MAX_REQUEST}\nrpc_timeout = {RPC_TIMEOUT}",
        **proc,
    )
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(p.start()).close()
        channel = loop.run_until_complete(raw_channel(p.sock))
        yield Target(p, loop, channel, (root, run_root or root, Path.cwd()), host)
        channel.close()
    finally:
        if p.proc is not None and p.proc.poll() is None:
            assert p.terminate() == 0, "the server did not stop cleanly"
        p.sock.unlink(missing_ok=True)
        loop.close()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from serve(tmp_path_factory.mktemp("hostile"))


SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


async def make_objects(sock: Path, tag: str) -> tuple[str, ...]:
    """A pod with a running and a created container: ids for hostile requests to reach
    past the lookup (the RPC under test may stop or remove them, as it would)."""
    async with CRIClient(sock) as client:
        await client.pull("busybox")  # again: a RemoveImage example may have removed it
        cfg = pod_config(f"obj-{tag}", log_directory="")
        pod = await client.run_pod(cfg)
        run = await client.create_container(pod, container_config("run", "busybox"), cfg)
        await client.start_container(run)
        made = await client.create_container(pod, container_config("made", "busybox"), cfg)
    return pod, run, made, run[:12], "busybox", f"obj-{tag}"


def requests(method: MethodDescriptor, h: Hostile, pod: str, image: str) -> Any:
    """Hostile messages, a third of them with strings over the size limit; for the creates
    also valid ones with hostile fields merged in, which get past the first checks."""
    small = dataclasses.replace(h, huge=0)
    return st.one_of(_requests(method, small, pod, image), _requests(method, h, pod, image))


def _requests(method: MethodDescriptor, h: Hostile, pod: str, image: str) -> Any:
    any_message = h.message(method.input_type)
    if method.name == "RunPodSandbox":
        return st.one_of(
            any_message,
            st.builds(
                lambda name, ns, uid, extra: pb.RunPodSandboxRequest(
                    config=_merged(pod_config(name, ns, uid=uid, log_directory=""), extra)
                ),
                h.strings(),
                h.strings(),
                h.strings(),
                h.message(pb.PodSandboxConfig.DESCRIPTOR),
            ),
        )
    if method.name == "CreateContainer":
        return st.one_of(
            any_message,
            st.builds(
                lambda name, log, extra: pb.CreateContainerRequest(
                    pod_sandbox_id=pod,
                    config=_merged(container_config(name, image, log_path=log), extra),
                ),
                h.strings(),
                h.host_paths(),
                h.message(pb.ContainerConfig.DESCRIPTOR),
            ),
        )
    return any_message


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.name)
def test_hostile_messages(fake: Target, method: MethodDescriptor) -> None:
    known = fake.loop.run_until_complete(make_objects(fake.proc.sock, method.name.lower()))
    h = Hostile(str(fake.host), known=known)
    strategy = requests(method, h, known[0], "busybox")

    @SETTINGS
    @given(request=strategy)
    def run(request: Message) -> None:
        fake.call(method, request)
        fake.check()

    run()


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.name)
def test_requests_that_are_not_messages(fake: Target, method: MethodDescriptor) -> None:
    strategy = Hostile(str(fake.host)).raw(method.input_type)

    @settings(SETTINGS, max_examples=6)
    @given(data=strategy)
    def run(data: bytes) -> None:
        fake.call(method, data)
        fake.check()

    run()
    # A string field that is not UTF-8 is never accepted.
    strings = [f for f in method.input_type.fields if f.type == f.TYPE_STRING]
    if strings:
        f = strings[0]
        data = bytes([f.number << 3 | 2, 4]) + b"\xff\xfe\xc3\x28"
        assert fake.call(method, data) is Status.INVALID_ARGUMENT


def test_a_request_over_the_size_limit_is_refused_unread(fake: Target) -> None:
    method = next(m for m in ALL_METHODS if m.name == "RunPodSandbox")
    big = pb.RunPodSandboxRequest(config=pod_config("big", annotations={"a": "x" * MAX_REQUEST}))
    status = fake.loop.run_until_complete(_status(fake, method, big))
    assert status[0] is Status.RESOURCE_EXHAUSTED
    assert "server.max_request_bytes" in status[1] and str(MAX_REQUEST) in status[1]
    fake.check()


async def _status(t: Target, method: MethodDescriptor, request: Message) -> tuple[Status, str]:
    req_type = GetMessageClass(method.input_type)
    reply_type = GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    with pytest.raises(GRPCError) as err:
        await UnaryUnaryMethod(t.channel, path, req_type, reply_type)(request, timeout=10)
    return err.value.status, str(err.value.message)


# -- the same against real pods ----------------------------------------------------------------


@pytest.fixture(scope="module")
def runc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, str, str]]:
    """A runc-backed server with a pulled image and one ready pod (for CreateContainer)."""
    require("runc")
    tmp = tmp_path_factory.mktemp("hostile-runc")
    run_root = Path(f"/run/crh{os.getpid() % 10000}")
    with LocalRegistry() as reg:
        im.push(reg, "hostile/busybox", im.busybox_image(cmd=("sh",)))
        ref = reg.ref("hostile/busybox")
        gen = serve(tmp, images_backend="registry", runtime="runc", run_root=run_root)
        target = next(gen)
        client = target.loop.run_until_complete(cri_client(target.proc.sock))
        try:
            target.loop.run_until_complete(client.pull(ref))
            pod = target.loop.run_until_complete(client.run_pod(pod_config("base")))
            yield target, ref, pod
            target.loop.run_until_complete(remove_all(client))
        finally:
            client.close()
            with pytest.raises(StopIteration):
                next(gen)
    linux.umount(str(run_root / "ns"))
    assert not [m[0] for m in linux.mountinfo() if m[0].startswith(str(run_root))]
    assert not processes_mentioning(str(run_root))
    shutil.rmtree(run_root, ignore_errors=True)


async def remove_all(client: CRIClient, keep: str = "") -> None:
    for p in (await client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items:
        if p.id != keep:
            await client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id))
    for c in (await client.runtime.ListContainers(pb.ListContainersRequest())).containers:
        await client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id))


@pytest.mark.root
@pytest.mark.registry
@pytest.mark.parametrize("method", HOST_METHODS, ids=lambda m: m.name)
def test_hostile_names_on_real_pods(
    runc: tuple[Target, str, str], method: MethodDescriptor
) -> None:
    target, ref, pod = runc
    strategy = requests(method, Hostile(str(target.host), known=(pod, "base")), pod, ref)
    client = target.loop.run_until_complete(cri_client(target.proc.sock))

    @settings(SETTINGS, max_examples=20)
    @given(request=strategy)
    def run(request: Message) -> None:
        target.call(method, request)
        target.check()
        target.loop.run_until_complete(remove_all(client, keep=pod))

    try:
        run()
    finally:
        client.close()


def _merged(base: Message, extra: Message) -> Any:
    """``base`` with the hostile ``extra`` fields merged in, but ``base``'s metadata."""
    out = type(base)()
    out.CopyFrom(extra)
    out.ClearField("metadata")
    out.MergeFrom(base)
    return out
