"""RuntimeService: one short handler per RPC (convert, call the core, convert back)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from cri_async.api.runtime.v1 import api_grpc
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.core import metrics, serde
from cri_async.core.errors import Unimplemented
from cri_async.core.filters import Filter
from cri_async.core.model import Container, ContainerState, Sandbox, SandboxState
from cri_async.core.runtime import Runtime
from cri_async.core.streams import Stdio
from cri_async.services import convert
from cri_async.services import stats as stats_pb
from cri_async.services.rpc import (
    Service,
    Tracker,
    server_stream,
    unary,
    unbounded_stream,
)
from cri_async.streaming.service import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamingService,
)

STREAM_CHUNK = 256  # items per message on the Stream* list RPCs
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = STREAM_CHUNK) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class RuntimeService(Service, api_grpc.RuntimeServiceBase):
    def __init__(
        self,
        runtime: Runtime,
        tracker: Tracker,
        cgroup_driver: str,
        streaming: StreamingService | None = None,
    ) -> None:
        super().__init__(tracker)
        self.rt = runtime
        self.cgroup_driver = cgroup_driver
        self.streaming = streaming
        self._containers = convert.MessageCache(convert.container)
        self._sandboxes = convert.MessageCache(convert.pod_sandbox)
        self._stats_msgs: dict[str, tuple[Container, object, pb.ContainerStats]] = {}

    # -- runtime ---------------------------------------------------------------------
    @unary
    async def Version(self, req: pb.VersionRequest) -> pb.VersionResponse:
        v = self.rt.version()
        return pb.VersionResponse(
            version=v.version,
            runtime_name=v.runtime_name,
            runtime_version=v.runtime_version,
            runtime_api_version=v.runtime_api_version,
        )

    @unary
    async def Status(self, req: pb.StatusRequest) -> pb.StatusResponse:
        st = await self.rt.status(req.verbose)
        return pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(
                        type=c.type, status=c.status, reason=c.reason, message=c.message
                    )
                    for c in st.conditions
                ]
            ),
            info=st.info,
            runtime_handlers=[
                pb.RuntimeHandler(
                    name=name,
                    features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=h.features.recursive_read_only_mounts,
                        user_namespaces=h.features.user_namespaces,
                    ),
                )
                for name, h in st.handlers.items()
            ],
            features=pb.RuntimeFeatures(
                supplemental_groups_policy=st.features.supplemental_groups_policy
            ),
        )

    @unary
    async def RuntimeConfig(self, req: pb.RuntimeConfigRequest) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.cgroup_driver == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    @unary
    async def UpdateRuntimeConfig(
        self, req: pb.UpdateRuntimeConfigRequest
    ) -> pb.UpdateRuntimeConfigResponse:
        await self.rt.update_runtime_config(req.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # -- pod sandboxes -----------------------------------------------------------------
    @unary
    async def RunPodSandbox(self, req: pb.RunPodSandboxRequest) -> pb.RunPodSandboxResponse:
        sid = await self.rt.sandboxes.run(convert.sandbox_config(req.config), req.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sid)

    @unary
    async def StopPodSandbox(self, req: pb.StopPodSandboxRequest) -> pb.StopPodSandboxResponse:
        await self.rt.sandboxes.stop(req.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    @unary
    async def RemovePodSandbox(
        self, req: pb.RemovePodSandboxRequest
    ) -> pb.RemovePodSandboxResponse:
        await self.rt.sandboxes.remove(req.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    @unary
    async def PodSandboxStatus(
        self, req: pb.PodSandboxStatusRequest
    ) -> pb.PodSandboxStatusResponse:
        sb = self.rt.sandboxes.status(req.pod_sandbox_id)
        containers = self.rt.ctx.sandbox_containers(sb.id)
        info = {"info": serde.dumps(sb)} if req.verbose else {}
        return pb.PodSandboxStatusResponse(
            status=convert.pod_sandbox_status(sb),
            info=info,
            containers_statuses=[convert.container_status(c) for c in containers],
            timestamp=time.time_ns(),
        )

    def _sandbox_items(self, f: pb.PodSandboxFilter) -> list[pb.PodSandbox]:
        items = self.rt.sandboxes.list(convert.sandbox_filter(f))
        out = [self._sandboxes.get(s.id, s) for s in items]
        if len(self._sandboxes._cache) > 2 * len(self.rt.ctx.sandboxes) + 64:
            self._sandboxes.prune({s.id for s in self.rt.ctx.sandboxes})
        return out

    @unary
    async def ListPodSandbox(self, req: pb.ListPodSandboxRequest) -> pb.ListPodSandboxResponse:
        return pb.ListPodSandboxResponse(items=self._sandbox_items(req.filter))

    @server_stream
    async def StreamPodSandboxes(
        self, req: pb.StreamPodSandboxesRequest
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        for chunk in chunks(self._sandbox_items(req.filter)):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=chunk)

    # -- containers --------------------------------------------------------------------
    @unary
    async def CreateContainer(self, req: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        cid = await self.rt.containers.create(
            req.pod_sandbox_id, convert.container_config(req.config)
        )
        return pb.CreateContainerResponse(container_id=cid)

    @unary
    async def StartContainer(self, req: pb.StartContainerRequest) -> pb.StartContainerResponse:
        await self.rt.containers.start(req.container_id)
        return pb.StartContainerResponse()

    @unary
    async def StopContainer(self, req: pb.StopContainerRequest) -> pb.StopContainerResponse:
        await self.rt.containers.stop(req.container_id, max(req.timeout, 0))
        return pb.StopContainerResponse()

    @unary
    async def RemoveContainer(self, req: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
        await self.rt.containers.remove(req.container_id)
        return pb.RemoveContainerResponse()

    def _container_items(self, f: pb.ContainerFilter) -> list[pb.Container]:
        items = self.rt.containers.list(convert.container_filter(f))
        out = [self._containers.get(c.id, c) for c in items]
        if len(self._containers._cache) > 2 * len(self.rt.ctx.containers) + 64:
            self._containers.prune({c.id for c in self.rt.ctx.containers})
        return out

    @unary
    async def ListContainers(self, req: pb.ListContainersRequest) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(containers=self._container_items(req.filter))

    @server_stream
    async def StreamContainers(
        self, req: pb.StreamContainersRequest
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        for chunk in chunks(self._container_items(req.filter)):
            yield pb.StreamContainersResponse(containers=chunk)

    @unary
    async def ContainerStatus(self, req: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
        c = self.rt.containers.status(req.container_id)
        info = {"info": serde.dumps(c)} if req.verbose else {}
        return pb.ContainerStatusResponse(status=convert.container_status(c), info=info)

    @unary
    async def UpdateContainerResources(
        self, req: pb.UpdateContainerResourcesRequest
    ) -> pb.UpdateContainerResourcesResponse:
        await self.rt.containers.update_resources(
            req.container_id, convert.resources(req.linux), dict(req.annotations)
        )
        return pb.UpdateContainerResourcesResponse()

    @unary
    async def ReopenContainerLog(
        self, req: pb.ReopenContainerLogRequest
    ) -> pb.ReopenContainerLogResponse:
        await self.rt.containers.reopen_log(req.container_id)
        return pb.ReopenContainerLogResponse()

    @unary
    async def ExecSync(self, req: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
        timeout = float(req.timeout) if req.timeout > 0 else None
        res = await self.rt.containers.exec_sync(req.container_id, list(req.cmd), timeout)
        return pb.ExecSyncResponse(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)

    # -- stats -------------------------------------------------------------------------
    async def _fresh_stats(self) -> None:
        """Stats answers are built from samples at most a moment old (read on demand)."""
        if self.rt.ctx.stats is not None:
            await self.rt.ctx.stats.fresh()

    def _container_stats(self, f: pb.ContainerStatsFilter) -> list[pb.ContainerStats]:
        flt: Filter[ContainerState] = Filter(
            id=f.id, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector)
        )
        return [self._stats_message(c) for c in self.rt.containers.list(flt)]

    def _stats_message(self, c: Container) -> pb.ContainerStats:
        """Samples change once per refresh and records once per state change, so a
        container's message is rebuilt only when either object is new (building 100 of
        them was most of ListContainerStats' CPU)."""
        cache = self.rt.ctx.stats
        sample = cache.get(c.id) if cache else None
        hit = self._stats_msgs.get(c.id)
        if hit is not None and hit[0] is c and hit[1] is sample:
            return hit[2]
        msg = stats_pb.container_stats(c, sample)
        self._stats_msgs[c.id] = (c, sample, msg)
        if len(self._stats_msgs) > 2 * len(self.rt.ctx.containers) + 64:
            live = {x.id for x in self.rt.ctx.containers}
            for k in [k for k in self._stats_msgs if k not in live]:
                del self._stats_msgs[k]
        return msg

    @unary
    async def ContainerStats(self, req: pb.ContainerStatsRequest) -> pb.ContainerStatsResponse:
        c = self.rt.containers.status(req.container_id)
        await self._fresh_stats()
        return pb.ContainerStatsResponse(stats=self._stats_message(c))

    @unary
    async def ListContainerStats(
        self, req: pb.ListContainerStatsRequest
    ) -> pb.ListContainerStatsResponse:
        await self._fresh_stats()
        return pb.ListContainerStatsResponse(stats=self._container_stats(req.filter))

    @server_stream
    async def StreamContainerStats(
        self, req: pb.StreamContainerStatsRequest
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        await self._fresh_stats()
        for chunk in chunks(self._container_stats(req.filter)):
            yield pb.StreamContainerStatsResponse(container_stats=chunk)

    def _pod_stats(self, sb: Sandbox) -> pb.PodSandboxStats:
        cache = self.rt.ctx.stats
        return stats_pb.pod_stats(
            sb,
            cache.get_pod(sb.id) if cache else None,
            [self._stats_message(c) for c in self.rt.ctx.sandbox_containers(sb.id)],
        )

    def _pods(self, f: pb.PodSandboxStatsFilter) -> list[Sandbox]:
        flt: Filter[SandboxState] = Filter(id=f.id, labels=dict(f.label_selector))
        return [s for s in self.rt.sandboxes.list(flt) if s.state is SandboxState.READY]

    @unary
    async def PodSandboxStats(self, req: pb.PodSandboxStatsRequest) -> pb.PodSandboxStatsResponse:
        sb = self.rt.sandboxes.status(req.pod_sandbox_id)
        await self._fresh_stats()
        return pb.PodSandboxStatsResponse(stats=self._pod_stats(sb))

    @unary
    async def ListPodSandboxStats(
        self, req: pb.ListPodSandboxStatsRequest
    ) -> pb.ListPodSandboxStatsResponse:
        await self._fresh_stats()
        return pb.ListPodSandboxStatsResponse(
            stats=[self._pod_stats(s) for s in self._pods(req.filter)]
        )

    @server_stream
    async def StreamPodSandboxStats(
        self, req: pb.StreamPodSandboxStatsRequest
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        await self._fresh_stats()
        items = [self._pod_stats(s) for s in self._pods(req.filter)]
        for chunk in chunks(items):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=chunk)

    @unary
    async def ListMetricDescriptors(
        self, req: pb.ListMetricDescriptorsRequest
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(
            descriptors=[stats_pb.descriptor(d) for d in metrics.metric_descriptors()]
        )

    def _pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        cache = self.rt.ctx.stats
        if cache is None:
            return []
        out = []
        for sb in self._pods(pb.PodSandboxStatsFilter()):
            sample = cache.get_pod(sb.id)
            if sample is None:
                continue
            infos = {
                c.id: metrics.ContainerInfo(c.metadata.name, c.config.image.image)
                for c in self.rt.ctx.sandbox_containers(sb.id)
            }
            pod = metrics.PodInfo(sb.metadata.name, sb.metadata.namespace)
            out.append(stats_pb.pod_metrics(metrics.pod_sandbox_metrics(sample, pod, infos)))
        return out

    @unary
    async def ListPodSandboxMetrics(
        self, req: pb.ListPodSandboxMetricsRequest
    ) -> pb.ListPodSandboxMetricsResponse:
        await self._fresh_stats()
        return pb.ListPodSandboxMetricsResponse(pod_metrics=self._pod_metrics())

    @server_stream
    async def StreamPodSandboxMetrics(
        self, req: pb.StreamPodSandboxMetricsRequest
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        await self._fresh_stats()
        for chunk in chunks(self._pod_metrics()):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=chunk)

    # -- events ------------------------------------------------------------------------
    @unbounded_stream
    async def GetContainerEvents(
        self, req: pb.GetEventsRequest
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        sub = self.rt.events.subscribe()
        try:
            async for ev in sub:
                yield convert.event(ev)
        finally:
            sub.close()

    # -- streaming: each answers a one-time URL on the streaming server ---------------
    def _streams(self) -> StreamingService:
        if self.streaming is None:
            raise Unimplemented("this server runs without a streaming server")
        return self.streaming

    @unary
    async def Exec(self, req: pb.ExecRequest) -> pb.ExecResponse:
        stdio = Stdio(req.stdin, req.stdout, req.stderr, req.tty)
        url = self._streams().issue_exec(ExecRequest(req.container_id, tuple(req.cmd), stdio))
        return pb.ExecResponse(url=url)

    @unary
    async def Attach(self, req: pb.AttachRequest) -> pb.AttachResponse:
        stdio = Stdio(req.stdin, req.stdout, req.stderr, req.tty)
        url = self._streams().issue_attach(AttachRequest(req.container_id, stdio))
        return pb.AttachResponse(url=url)

    @unary
    async def PortForward(self, req: pb.PortForwardRequest) -> pb.PortForwardResponse:
        request = PortForwardRequest(req.pod_sandbox_id, tuple(req.port))
        return pb.PortForwardResponse(url=self._streams().issue_port_forward(request))

    # -- not implemented: UNIMPLEMENTED, naming what is missing -----------------------

    @unary
    async def UpdatePodSandboxResources(
        self, req: pb.UpdatePodSandboxResourcesRequest
    ) -> pb.UpdatePodSandboxResourcesResponse:
        await self.rt.sandboxes.update_resources(
            req.pod_sandbox_id,
            convert.resources(req.overhead) if req.HasField("overhead") else None,
            convert.resources(req.resources) if req.HasField("resources") else None,
        )
        return pb.UpdatePodSandboxResourcesResponse()

    @unary
    async def CheckpointContainer(
        self, req: pb.CheckpointContainerRequest
    ) -> pb.CheckpointContainerResponse:
        await self.rt.checkpoint("CheckpointContainer")
        return pb.CheckpointContainerResponse()

    @unary
    async def CheckpointPod(self, req: pb.CheckpointPodRequest) -> pb.CheckpointPodResponse:
        await self.rt.checkpoint("CheckpointPod")
        return pb.CheckpointPodResponse()

    @unary
    async def RestorePod(self, req: pb.RestorePodRequest) -> pb.RestorePodResponse:
        await self.rt.checkpoint("RestorePod")
        return pb.RestorePodResponse()
