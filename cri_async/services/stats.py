"""Stats samples and metrics -> CRI messages (the edge half of the stats RPCs)."""

from __future__ import annotations

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.core import metrics as mt
from cri_async.core.model import Container, Sandbox
from cri_async.core.stats import (
    ContainerSample,
    CpuStats,
    InterfaceStats,
    MemoryStats,
    NetworkStats,
    PodSample,
    Psi,
    PsiData,
)
from cri_async.services import convert


def _u64(v: int | None) -> pb.UInt64Value | None:
    return None if v is None else pb.UInt64Value(value=max(v, 0))


def _psi(p: Psi | None) -> pb.PsiStats | None:
    if p is None:
        return None

    def data(d: PsiData | None) -> pb.PsiData | None:
        if d is None:
            return None
        return pb.PsiData(Total=d.total_ns, Avg10=d.avg10, Avg60=d.avg60, Avg300=d.avg300)

    return pb.PsiStats(Some=data(p.some), Full=data(p.full))


def cpu(c: CpuStats | None) -> pb.CpuUsage | None:
    if c is None:
        return None
    return pb.CpuUsage(
        timestamp=c.timestamp,
        usage_core_nano_seconds=_u64(c.usage_core_nano_seconds),
        usage_nano_cores=_u64(c.usage_nano_cores),
        psi=_psi(c.psi),
    )


def memory(m: MemoryStats | None) -> pb.MemoryUsage | None:
    if m is None:
        return None
    return pb.MemoryUsage(
        timestamp=m.timestamp,
        working_set_bytes=_u64(m.working_set_bytes),
        available_bytes=_u64(m.available_bytes),
        usage_bytes=_u64(m.usage_bytes),
        rss_bytes=_u64(m.rss_bytes),
        page_faults=_u64(m.page_faults),
        major_page_faults=_u64(m.major_page_faults),
        psi=_psi(m.psi),
    )


def container_stats(c: Container, s: ContainerSample | None) -> pb.ContainerStats:
    out = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id,
            metadata=convert.pb_container_metadata(c.metadata),
            labels=c.config.labels,
            annotations=c.config.annotations,
        )
    )
    if s is None:
        return out
    if (v := cpu(s.cpu)) is not None:
        out.cpu.CopyFrom(v)
    if (m := memory(s.memory)) is not None:
        out.memory.CopyFrom(m)
    if s.swap is not None:
        out.swap.CopyFrom(
            pb.SwapUsage(
                timestamp=s.swap.timestamp,
                swap_usage_bytes=_u64(s.swap.swap_usage_bytes),
                swap_available_bytes=_u64(s.swap.swap_available_bytes),
            )
        )
    if s.io is not None:
        out.io.CopyFrom(pb.IoUsage(timestamp=s.io.timestamp, psi=_psi(s.io.psi)))
    w = s.writable_layer
    if w is not None:
        out.writable_layer.CopyFrom(
            pb.FilesystemUsage(
                timestamp=w.timestamp,
                fs_id=pb.FilesystemIdentifier(mountpoint=w.mountpoint),
                used_bytes=pb.UInt64Value(value=w.used_bytes),
                inodes_used=pb.UInt64Value(value=w.inodes_used),
            )
        )
    return out


def _network(n: NetworkStats | None) -> pb.NetworkUsage | None:
    if n is None:
        return None

    def iface(i: InterfaceStats) -> pb.NetworkInterfaceUsage:
        return pb.NetworkInterfaceUsage(
            name=i.name,
            rx_bytes=_u64(i.rx_bytes),
            rx_errors=_u64(i.rx_errors),
            tx_bytes=_u64(i.tx_bytes),
            tx_errors=_u64(i.tx_errors),
        )

    out = pb.NetworkUsage(timestamp=n.timestamp, interfaces=[iface(i) for i in n.interfaces])
    if n.default_interface is not None:
        out.default_interface.CopyFrom(iface(n.default_interface))
    return out


def pod_stats(
    sb: Sandbox, s: PodSample | None, containers: list[pb.ContainerStats]
) -> pb.PodSandboxStats:
    out = pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=sb.id,
            metadata=convert.pb_pod_metadata(sb.metadata),
            labels=sb.config.labels,
            annotations=sb.config.annotations,
        )
    )
    linux = out.linux
    linux.containers.extend(containers)
    if s is not None:
        if (v := cpu(s.cpu)) is not None:
            linux.cpu.CopyFrom(v)
        if (m := memory(s.memory)) is not None:
            linux.memory.CopyFrom(m)
        if (n := _network(s.network)) is not None:
            linux.network.CopyFrom(n)
        if s.process is not None:
            linux.process.CopyFrom(
                pb.ProcessUsage(
                    timestamp=s.process.timestamp,
                    process_count=_u64(s.process.process_count),
                )
            )
    return out


def descriptor(d: mt.MetricDescriptor) -> pb.MetricDescriptor:
    return pb.MetricDescriptor(name=d.name, help=d.help, label_keys=d.label_keys)


def _metric(m: mt.Metric) -> pb.Metric:
    return pb.Metric(
        name=m.name,
        timestamp=m.timestamp,
        metric_type=pb.COUNTER if m.metric_type is mt.MetricType.COUNTER else pb.GAUGE,
        label_values=m.label_values,
        value=pb.UInt64Value(value=max(m.value, 0)),
    )


def pod_metrics(p: mt.PodSandboxMetrics) -> pb.PodSandboxMetrics:
    return pb.PodSandboxMetrics(
        pod_sandbox_id=p.pod_sandbox_id,
        metrics=[_metric(m) for m in p.metrics],
        container_metrics=[
            pb.ContainerMetrics(
                container_id=c.container_id, metrics=[_metric(m) for m in c.metrics]
            )
            for c in p.container_metrics
        ],
    )
