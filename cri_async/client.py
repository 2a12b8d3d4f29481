"""An async CRI client over the unix socket, with builders for common requests."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from grpclib.client import Channel

from cri_async.api.runtime.v1 import api_grpc
from cri_async.api.runtime.v1 import api_pb2 as pb


class CRIClient:
    """``runtime`` and ``images`` are the generated grpclib stubs (all RPCs, typed)."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = str(socket_path)
        self.channel = Channel(path=self.socket_path)
        self.runtime = api_grpc.RuntimeServiceStub(self.channel)
        self.images = api_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    async def __aenter__(self) -> CRIClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- conveniences --------------------------------------------------------------------
    async def version(self) -> pb.VersionResponse:
        return await self.runtime.Version(pb.VersionRequest(version="v1"))

    async def pull(self, image: str) -> str:
        resp = await self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        return resp.image_ref

    async def run_pod(self, config: pb.PodSandboxConfig, handler: str = "") -> str:
        resp = await self.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        )
        return resp.pod_sandbox_id

    async def create_container(
        self, pod_id: str, config: pb.ContainerConfig, pod_config: pb.PodSandboxConfig
    ) -> str:
        resp = await self.runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config
            )
        )
        return resp.container_id

    async def start_container(self, container_id: str) -> None:
        await self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))

    async def container_status(self, container_id: str) -> pb.ContainerStatus:
        resp = await self.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id)
        )
        return resp.status

    async def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: int = 0
    ) -> pb.ExecSyncResponse:
        return await self.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        )


def pod_config(
    name: str,
    namespace: str = "default",
    *,
    uid: str | None = None,
    attempt: int = 0,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    log_directory: str = "",
    host_network: bool = False,
    hostname: str | None = None,
) -> pb.PodSandboxConfig:
    """A PodSandboxConfig shaped like the ones kubelet sends (``hostname`` defaults to
    kubelet's choice, the pod name cut to a valid host name; "" leaves it unset)."""
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name, namespace=namespace, uid=uid or str(uuid.uuid4()), attempt=attempt
        ),
        # kubelet's rule: the pod name cut to a valid host name.
        hostname=name[:63].rstrip("-.") if hostname is None else hostname,
        log_directory=log_directory,
        labels=labels or {},
        annotations=annotations or {},
    )
    # kubelet's default (shareProcessNamespace: false); the proto's zero value is POD.
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    if host_network:
        cfg.linux.security_context.namespace_options.network = pb.NODE
    return cfg


def container_config(
    name: str,
    image: str,
    *,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    attempt: int = 0,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    log_path: str = "",
    env: Mapping[str, str] | None = None,
) -> pb.ContainerConfig:
    """A ContainerConfig shaped like the ones kubelet sends (its own PID namespace, as
    kubelet asks unless the pod shares one)."""
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=attempt),
        image=pb.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        labels=labels or {},
        annotations=annotations or {},
        log_path=log_path,
        envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in (env or {}).items()],
    )
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    return cfg
