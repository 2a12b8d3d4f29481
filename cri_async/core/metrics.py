"""cAdvisor-compatible metrics for ListMetricDescriptors / ListPodSandboxMetrics.

With ``PodAndContainerStatsFromCRI`` kubelet serves ``/metrics/cadvisor`` from these RPCs: it
builds one Prometheus descriptor per ``MetricDescriptor`` (name, help, ``label_keys`` as
variable labels) and one constant metric per ``Metric`` (``float64(value)``, counter or
gauge, ``timestamp`` in ns; 0 means "not cached"). Names, help texts and types follow
cAdvisor's ``/metrics/cadvisor`` output, so existing dashboards and recording rules keep
working. Pure functions: samples plus the few names the samples do not carry, in; frozen
dataclasses mirroring the CRI messages, out.

Labels: every metric has :data:`BASE_LABEL_KEYS` (the labels kubelet's embedded cAdvisor put
on container series: ``container``, ``id``, ``image``, ``name``, ``namespace``, ``pod``) and
possibly metric-specific ones (``cpu``, ``interface``, ``device``, ``failure_type``,
``scope``). For a container: ``container`` = its CRI metadata name, ``id`` = its cgroup path
(cAdvisor's id), ``image`` = its image, ``name`` = its id. Pod-level series (the pod cgroup
and the pod's network) have ``container=""``, ``image=""``, ``name=""`` and ``id`` = the pod
cgroup parent, like cAdvisor's pod-cgroup series, so ``container!=""`` filters still select
containers only.

Values are ``UInt64Value`` in CRI, so "seconds" counters are whole seconds (floored), as in
CRI-O; ``container_spec_memory_limit_bytes`` is 0 for "unlimited" and
``container_threads_max`` is 0 for "no limit" (cAdvisor: "infinity if value is zero").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from cri_async.core.stats import ContainerSample, PodSample, Psi

NS_PER_S = 1_000_000_000
BASE_LABEL_KEYS: tuple[str, ...] = ("container", "id", "image", "name", "namespace", "pod")


class MetricType(IntEnum):
    """Same numbers as CRI's ``MetricType`` enum."""

    COUNTER = 0
    GAUGE = 1


@dataclass(frozen=True, slots=True)
class MetricDescriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    metric_type: MetricType  # not part of CRI's descriptor; every Metric carries it


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    timestamp: int
    metric_type: MetricType
    label_values: tuple[str, ...]  # parallel to the descriptor's label_keys
    value: int


@dataclass(frozen=True, slots=True)
class ContainerMetrics:
    container_id: str
    metrics: tuple[Metric, ...]


@dataclass(frozen=True, slots=True)
class PodSandboxMetrics:
    pod_sandbox_id: str
    metrics: tuple[Metric, ...]
    container_metrics: tuple[ContainerMetrics, ...]


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the samples do not know: the container's CRI metadata name and its image."""

    name: str
    image: str


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    namespace: str


Sample = ContainerSample | PodSample
Values = list[tuple[tuple[str, ...], int]]  # (extra label values, value)


def _secs(ns: int) -> int:
    return ns // NS_PER_S


def _one(v: int | None) -> Values:
    return [] if v is None else [((), v)]


# -- extractors -----------------------------------------------------------------------------


def _cpu_total(s: Sample) -> Values:
    return [] if s.cpu is None else [(("total",), _secs(s.cpu.usage_core_nano_seconds))]


def _cpu_user(s: Sample) -> Values:
    v = None if s.cpu is None else s.cpu.user_nano_seconds
    return _one(None if v is None else _secs(v))


def _cpu_system(s: Sample) -> Values:
    v = None if s.cpu is None else s.cpu.system_nano_seconds
    return _one(None if v is None else _secs(v))


def _cfs_periods(s: Sample) -> Values:
    return _one(None if s.cpu is None else s.cpu.cfs_periods)


def _cfs_throttled_periods(s: Sample) -> Values:
    return _one(None if s.cpu is None else s.cpu.cfs_throttled_periods)


def _cfs_throttled_secs(s: Sample) -> Values:
    v = None if s.cpu is None else s.cpu.cfs_throttled_nano_seconds
    return _one(None if v is None else _secs(v))


def _mem_usage(s: Sample) -> Values:
    return _one(None if s.memory is None else s.memory.usage_bytes)


def _mem_ws(s: Sample) -> Values:
    return _one(None if s.memory is None else s.memory.working_set_bytes)


def _mem_rss(s: Sample) -> Values:
    return _one(None if s.memory is None else s.memory.rss_bytes)


def _mem_cache(s: Sample) -> Values:
    return _one(None if s.memory is None else s.memory.cache_bytes)


def _mem_mapped(s: Sample) -> Values:
    return _one(None if s.memory is None else s.memory.mapped_file_bytes)


def _mem_swap(s: Sample) -> Values:
    return _one(None if s.swap is None else s.swap.swap_usage_bytes)


def _mem_failures(s: Sample) -> Values:
    # Faults come from the hierarchical counters; a container cgroup is a leaf, so its
    # "container" and "hierarchy" scopes are equal (cAdvisor reports both).
    m = s.memory
    out: Values = []
    if m is None:
        return out
    for scope in ("container", "hierarchy"):
        if m.page_faults is not None:
            out.append((("pgfault", scope), m.page_faults))
        if m.major_page_faults is not None:
            out.append((("pgmajfault", scope), m.major_page_faults))
    return out


def _oom(s: Sample) -> Values:
    return _one(None if s.memory is None else s.memory.oom_kills)


def _mem_limit(s: Sample) -> Values:
    return [] if s.memory is None else [((), s.memory.limit_bytes or 0)]


def _processes(s: Sample) -> Values:
    return _one(None if s.process is None else s.process.process_count)


def _threads_max(s: Sample) -> Values:
    return [] if s.process is None else [((), s.process.process_limit or 0)]


def _fs_usage(s: Sample) -> Values:
    if not isinstance(s, ContainerSample) or s.writable_layer is None:
        return []
    return [((), s.writable_layer.used_bytes)]


def _io(attr: str) -> Callable[[Sample], Values]:
    def values(s: Sample) -> Values:
        if s.io is None:
            return []
        return [((d.name or f"{d.major}:{d.minor}",), getattr(d, attr)) for d in s.io.devices]

    return values


def _net(attr: str) -> Callable[[Sample], Values]:
    def values(s: Sample) -> Values:
        if not isinstance(s, PodSample) or s.network is None:
            return []
        # Like cAdvisor, loopback is not reported.
        return [((i.name,), getattr(i, attr)) for i in s.network.interfaces if i.name != "lo"]

    return values


def _psi(resource: str, line: str) -> Callable[[Sample], Values]:
    def values(s: Sample) -> Values:
        psi: Psi | None
        if resource == "cpu":
            psi = None if s.cpu is None else s.cpu.psi
        elif resource == "memory":
            psi = None if s.memory is None else s.memory.psi
        else:
            psi = None if s.io is None else s.io.psi
        data = None if psi is None else (psi.some if line == "some" else psi.full)
        return _one(None if data is None else _secs(data.total_ns))

    return values


# -- the table ------------------------------------------------------------------------------

C, G = MetricType.COUNTER, MetricType.GAUGE


@dataclass(frozen=True, slots=True)
class _Def:
    descriptor: MetricDescriptor
    values: Callable[[Sample], Values]


def _d(
    name: str, help: str, mtype: MetricType, fn: Callable[[Sample], Values], *extra: str
) -> _Def:
    return _Def(MetricDescriptor(name, help, BASE_LABEL_KEYS + extra, mtype), fn)


_PRESSURE = [
    _d(
        f"container_pressure_{res}_{word}_seconds_total",
        f"Total time duration {who} due to {what} congestion.",
        C,
        _psi(res, line),
    )
    for res, what in (("cpu", "CPU"), ("memory", "memory"), ("io", "IO"))
    for line, word, who in (
        ("some", "waiting", "tasks in the container have waited"),
        ("full", "stalled", "no tasks in the container could make progress"),
    )
]

_NETWORK = [
    _d(
        f"container_network_{direction}_{kind}_total",
        f"Cumulative count of {text}",
        C,
        _net(f"{prefix}_{attr}"),
        "interface",
    )
    for direction, prefix, verb, errverb in (
        ("receive", "rx", "received", "receiving"),
        ("transmit", "tx", "transmitted", "transmitting"),
    )
    for kind, attr, text in (
        ("bytes", "bytes", f"bytes {verb}"),
        ("packets", "packets", f"packets {verb}"),
        ("packets_dropped", "dropped", f"packets dropped while {errverb}"),
        ("errors", "errors", f"errors encountered while {errverb}"),
    )
]

DEFINITIONS: tuple[_Def, ...] = (
    _d(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        C,
        _cpu_total,
        "cpu",
    ),
    _d(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        C,
        _cpu_user,
    ),
    _d(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        C,
        _cpu_system,
    ),
    _d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        C,
        _cfs_periods,
    ),
    _d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        C,
        _cfs_throttled_periods,
    ),
    _d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        C,
        _cfs_throttled_secs,
    ),
    _d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        G,
        _mem_usage,
    ),
    _d("container_memory_working_set_bytes", "Current working set in bytes.", G, _mem_ws),
    _d("container_memory_rss", "Size of RSS in bytes.", G, _mem_rss),
    _d("container_memory_cache", "Number of bytes of page cache memory.", G, _mem_cache),
    _d("container_memory_mapped_file", "Size of memory mapped files in bytes.", G, _mem_mapped),
    _d("container_memory_swap", "Container swap usage in bytes.", G, _mem_swap),
    _d(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        C,
        _mem_failures,
        "failure_type",
        "scope",
    ),
    _d(
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        C,
        _oom,
    ),
    _d(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        G,
        _mem_limit,
    ),
    _d(
        "container_processes",
        "Number of processes running inside the container.",
        G,
        _processes,
    ),
    _d(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
        G,
        _threads_max,
    ),
    _d(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        G,
        _fs_usage,
    ),
    _d(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read",
        C,
        _io("read_bytes"),
        "device",
    ),
    _d(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written",
        C,
        _io("write_bytes"),
        "device",
    ),
    _d(
        "container_fs_reads_total", "Cumulative count of reads completed", C, _io("reads"), "device"
    ),
    _d(
        "container_fs_writes_total",
        "Cumulative count of writes completed",
        C,
        _io("writes"),
        "device",
    ),
    *_NETWORK,
    *_PRESSURE,
)


def metric_descriptors() -> tuple[MetricDescriptor, ...]:
    """Every metric this runtime can report (ListMetricDescriptors)."""
    return tuple(d.descriptor for d in DEFINITIONS)


def _metrics(sample: Sample, base: tuple[str, ...]) -> tuple[Metric, ...]:
    out = []
    for d in DEFINITIONS:
        desc = d.descriptor
        for extra, value in d.values(sample):
            out.append(Metric(desc.name, sample.timestamp, desc.metric_type, base + extra, value))
    return tuple(out)


def container_metrics(
    sample: ContainerSample, container: ContainerInfo, pod: PodInfo
) -> ContainerMetrics:
    base = (
        container.name,
        sample.cgroups_path,
        container.image,
        sample.container_id,
        pod.namespace,
        pod.name,
    )
    return ContainerMetrics(sample.container_id, _metrics(sample, base))


def pod_sandbox_metrics(
    sample: PodSample, pod: PodInfo, containers: Mapping[str, ContainerInfo]
) -> PodSandboxMetrics:
    """The pod's own series (pod cgroup, network) plus one ContainerMetrics per container
    sample; a container missing from ``containers`` gets empty name and image labels."""
    base = ("", sample.cgroup_parent, "", "", pod.namespace, pod.name)
    unknown = ContainerInfo(name="", image="")
    return PodSandboxMetrics(
        pod_sandbox_id=sample.sandbox_id,
        metrics=_metrics(sample, base),
        container_metrics=tuple(
            container_metrics(c, containers.get(c.container_id, unknown), pod)
            for c in sample.containers
        ),
    )
