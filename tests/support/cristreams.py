"""A minimal CRI RuntimeService for driving real clients (crictl) against the streaming
server: Version, ContainerStatus, Exec, Attach and PortForward, answered from a small
table of container and sandbox records through StreamingService. grpclib answers every
other method UNIMPLEMENTED."""

from __future__ import annotations

import time
from typing import Any

import grpclib.const
from grpclib.server import Stream

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.core.errors import CRIError, NotFound
from cri_async.core.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    ImageSpec,
    PodMetadata,
    Sandbox,
    SandboxConfig,
)
from cri_async.services.rpc import to_status
from cri_async.streaming.backend import Stdio
from cri_async.streaming.service import (
    AttachRequest,
    ExecRequest,
    Issuer,
    PortForwardRequest,
    StreamingService,
)


def container(cid: str, *, stdin_once: bool = False, tty: bool = False) -> Container:
    cfg = ContainerConfig(
        ContainerMetadata(cid), ImageSpec("busybox"), stdin=True, stdin_once=stdin_once, tty=tty
    )
    return Container(
        cid, "pod", cfg, "sha256:0", "busybox", time.time_ns(), state=ContainerState.RUNNING
    )


def sandbox(sid: str) -> Sandbox:
    return Sandbox(sid, SandboxConfig(PodMetadata(sid, sid + "-uid", "default")), "", 0)


class Records:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.sandboxes: dict[str, Sandbox] = {}

    class _Table:
        def __init__(self, items: dict[str, Any], kind: str) -> None:
            self.items, self.kind = items, kind

        def status(self, key: str) -> Any:
            if key not in self.items:
                raise NotFound(f"{self.kind} {key!r} not found")
            return self.items[key]

    def service(self, issuer: Issuer) -> StreamingService:
        return StreamingService(
            self._Table(self.containers, "container"),
            self._Table(self.sandboxes, "pod sandbox"),
            issuer,
        )


class StreamingRuntimeService:
    def __init__(self, streaming: StreamingService, records: Records) -> None:
        self.streaming = streaming
        self.records = records
        self.calls: list[str] = []

    async def _unary(self, stream: Stream[Any, Any], fn: Any) -> None:
        req = await stream.recv_message()
        self.calls.append(type(req).__name__)
        try:
            reply = fn(req)
        except CRIError as e:
            await stream.send_trailing_metadata(status=to_status(e), status_message=str(e))
            return
        await stream.send_message(reply)

    async def Version(self, stream: Stream[Any, Any]) -> None:
        await self._unary(
            stream,
            lambda req: pb.VersionResponse(
                version="0.1.0",
                runtime_name="cri-async-streaming-test",
                runtime_version="0",
                runtime_api_version="v1",
            ),
        )

    async def ContainerStatus(self, stream: Stream[Any, Any]) -> None:
        def status(req: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
            c = self.records.containers.get(req.container_id)
            if c is None:
                raise NotFound(f"container {req.container_id!r} not found")
            return pb.ContainerStatusResponse(
                status=pb.ContainerStatus(
                    id=c.id,
                    metadata=pb.ContainerMetadata(name=c.metadata.name),
                    state=pb.CONTAINER_RUNNING,
                )
            )

        await self._unary(stream, status)

    async def Exec(self, stream: Stream[Any, Any]) -> None:
        def exec_(req: pb.ExecRequest) -> pb.ExecResponse:
            stdio = Stdio(req.stdin, req.stdout, req.stderr, req.tty)
            url = self.streaming.issue_exec(ExecRequest(req.container_id, tuple(req.cmd), stdio))
            return pb.ExecResponse(url=url)

        await self._unary(stream, exec_)

    async def Attach(self, stream: Stream[Any, Any]) -> None:
        def attach(req: pb.AttachRequest) -> pb.AttachResponse:
            stdio = Stdio(req.stdin, req.stdout, req.stderr, req.tty)
            return pb.AttachResponse(
                url=self.streaming.issue_attach(AttachRequest(req.container_id, stdio))
            )

        await self._unary(stream, attach)

    async def PortForward(self, stream: Stream[Any, Any]) -> None:
        def forward(req: pb.PortForwardRequest) -> pb.PortForwardResponse:
            url = self.streaming.issue_port_forward(
                PortForwardRequest(req.pod_sandbox_id, tuple(req.port))
            )
            return pb.PortForwardResponse(url=url)

        await self._unary(stream, forward)

    async def ListImages(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, lambda req: pb.ListImagesResponse())

    async def ImageFsInfo(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, lambda req: pb.ImageFsInfoResponse())

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """crictl validates the image API at connect time: it gets empty answers."""
        unary = grpclib.const.Cardinality.UNARY_UNARY
        rt, im = "/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"
        methods: list[tuple[str, Any, Any, Any]] = [
            (rt + "Version", self.Version, pb.VersionRequest, pb.VersionResponse),
            (
                rt + "ContainerStatus",
                self.ContainerStatus,
                pb.ContainerStatusRequest,
                pb.ContainerStatusResponse,
            ),
            (rt + "Exec", self.Exec, pb.ExecRequest, pb.ExecResponse),
            (rt + "Attach", self.Attach, pb.AttachRequest, pb.AttachResponse),
            (rt + "PortForward", self.PortForward, pb.PortForwardRequest, pb.PortForwardResponse),
            (im + "ListImages", self.ListImages, pb.ListImagesRequest, pb.ListImagesResponse),
            (im + "ImageFsInfo", self.ImageFsInfo, pb.ImageFsInfoRequest, pb.ImageFsInfoResponse),
        ]
        return {
            path: grpclib.const.Handler(fn, unary, req, resp) for path, fn, req, resp in methods
        }
