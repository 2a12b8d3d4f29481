"""A shim's Stats answer (cgroup metrics in an Any) as the stats package's ``CgroupStats``.

Pure. The shim reads the task's cgroup itself (on the host for runc shims, inside the VM
for Kata), so this is how a shim-backed container gets CPU, memory, pids and I/O numbers.
The result means what :mod:`cri_async.stats.cgroups` produces from the files, so the stats
cache turns it into CRI stats unchanged:

* v1 (``io.containerd.cgroups.v1.Metrics``, also hybrid hosts): the hierarchical
  ``total_*`` counters; user/kernel CPU already in ns; ``swap`` is the memsw pair, so swap
  usage is memsw usage minus memory usage; oom kills from ``memory_oom_control``.
* v2 (``io.containerd.cgroups.v2.Metrics``): microsecond CPU counters times 1000, ``anon``
  as rss, ``file`` as cache, PSI when the shim sent it.
* A limit of 0 (not read) or above 2**62 (``max``, v1's near-2**63 "unlimited", 2**64-1) is
  no limit. Absent sub-messages give ``None`` fields, never zeros.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from cri_async.api.containerd.cgroups.v1 import metrics_pb2 as v1
from cri_async.api.containerd.cgroups.v2 import metrics_pb2 as v2
from cri_async.core.stats import IoDeviceStats, Psi, PsiData
from cri_async.stats.cgroupstats import NS_PER_US, UNLIMITED_ABOVE, CgroupStats, working_set

__all__ = ["V1_METRICS_URL", "V2_METRICS_URL", "UnsupportedMetrics", "cgroup_stats"]

V1_METRICS_URL = "io.containerd.cgroups.v1.Metrics"
V2_METRICS_URL = "io.containerd.cgroups.v2.Metrics"


class UnsupportedMetrics(ValueError):
    """The Any holds something other than containerd cgroup metrics (or is corrupt)."""


def _limit(value: int) -> int | None:
    return None if value == 0 or value > UNLIMITED_ABOVE else value


def cgroup_stats(stats: any_pb2.Any) -> CgroupStats:
    """Decode a StatsResponse.stats Any. Raises :class:`UnsupportedMetrics`."""
    name = stats.type_url.rsplit("/", 1)[-1]
    try:
        if name == V1_METRICS_URL:
            return from_v1(v1.Metrics.FromString(stats.value))
        if name == V2_METRICS_URL:
            return from_v2(v2.Metrics.FromString(stats.value))
    except DecodeError as e:
        raise UnsupportedMetrics(f"undecodable {name}: {e}") from e
    raise UnsupportedMetrics(f"stats of type {stats.type_url!r} are not cgroup metrics")


def _blkio(m: v1.BlkIOStat) -> tuple[IoDeviceStats, ...]:
    table: dict[tuple[int, int], dict[str, int]] = {}
    for field, kind in ((m.io_service_bytes_recursive, "bytes"), (m.io_serviced_recursive, "ops")):
        for e in field:
            row = table.setdefault((e.major, e.minor), {})
            op = e.op.lower()
            if op in ("read", "write"):
                row[f"{op}_{kind}"] = row.get(f"{op}_{kind}", 0) + e.value
    return tuple(
        IoDeviceStats(
            major,
            minor,
            read_bytes=row.get("read_bytes", 0),
            write_bytes=row.get("write_bytes", 0),
            reads=row.get("read_ops", 0),
            writes=row.get("write_ops", 0),
        )
        for (major, minor), row in sorted(table.items())
    )


def from_v1(m: v1.Metrics) -> CgroupStats:
    cpu = m.cpu if m.HasField("cpu") else None
    mem = m.memory if m.HasField("memory") else None
    usage = mem.usage.usage if mem is not None and mem.HasField("usage") else None
    limit = _limit(mem.usage.limit) if mem is not None and mem.HasField("usage") else None
    swap = swap_limit = None
    if mem is not None and mem.HasField("swap") and mem.swap.usage and usage is not None:
        swap = max(mem.swap.usage - usage, 0)  # memsw counts memory + swap
        memsw_limit = _limit(mem.swap.limit)
        if memsw_limit is not None and limit is not None:
            swap_limit = max(memsw_limit - limit, 0)
    throttle = cpu.throttling if cpu is not None and cpu.HasField("throttling") else None
    cpu_usage = cpu.usage if cpu is not None and cpu.HasField("usage") else None
    return CgroupStats(
        version=1,
        cpu_usage_ns=cpu_usage.total if cpu_usage is not None else None,
        cpu_user_ns=cpu_usage.user if cpu_usage is not None else None,
        cpu_system_ns=cpu_usage.kernel if cpu_usage is not None else None,
        cpu_periods=throttle.periods if throttle is not None else None,
        cpu_throttled_periods=throttle.throttled_periods if throttle is not None else None,
        cpu_throttled_ns=throttle.throttled_time if throttle is not None else None,
        memory_usage=usage,
        memory_limit=limit,
        memory_working_set=(
            None if usage is None or mem is None else working_set(usage, mem.total_inactive_file)
        ),
        memory_rss=mem.total_rss if mem is not None else None,
        memory_cache=mem.total_cache if mem is not None else None,
        memory_mapped_file=mem.total_mapped_file if mem is not None else None,
        memory_inactive_file=mem.total_inactive_file if mem is not None else None,
        pgfault=mem.total_pg_fault if mem is not None else None,
        pgmajfault=mem.total_pg_maj_fault if mem is not None else None,
        swap_usage=swap,
        swap_limit=swap_limit,
        oom_kills=(m.memory_oom_control.oom_kill if m.HasField("memory_oom_control") else None),
        pids_current=m.pids.current if m.HasField("pids") else None,
        pids_max=_limit(m.pids.limit) if m.HasField("pids") else None,
        io=_blkio(m.blkio) if m.HasField("blkio") else (),
    )


def _psi(p: v2.PSIStats) -> Psi | None:
    if not p.HasField("some"):
        return None

    def data(d: v2.PSIData) -> PsiData:
        return PsiData(d.avg10, d.avg60, d.avg300, d.total * NS_PER_US)

    return Psi(data(p.some), data(p.full) if p.HasField("full") else None)


def from_v2(m: v2.Metrics) -> CgroupStats:
    cpu = m.cpu if m.HasField("cpu") else None
    mem = m.memory if m.HasField("memory") else None
    usage = mem.usage if mem is not None else None

    def us(value: int | None) -> int | None:
        return None if value is None else value * NS_PER_US

    return CgroupStats(
        version=2,
        cpu_usage_ns=us(cpu.usage_usec if cpu else None),
        cpu_user_ns=us(cpu.user_usec if cpu else None),
        cpu_system_ns=us(cpu.system_usec if cpu else None),
        cpu_periods=cpu.nr_periods if cpu else None,
        cpu_throttled_periods=cpu.nr_throttled if cpu else None,
        cpu_throttled_ns=us(cpu.throttled_usec if cpu else None),
        memory_usage=usage,
        memory_limit=_limit(mem.usage_limit) if mem else None,
        memory_working_set=None if mem is None else working_set(mem.usage, mem.inactive_file),
        memory_rss=mem.anon if mem else None,
        memory_cache=mem.file if mem else None,
        memory_mapped_file=mem.file_mapped if mem else None,
        memory_shmem=mem.shmem if mem else None,
        memory_inactive_file=mem.inactive_file if mem else None,
        pgfault=mem.pgfault if mem else None,
        pgmajfault=mem.pgmajfault if mem else None,
        swap_usage=mem.swap_usage if mem else None,
        swap_limit=_limit(mem.swap_limit) if mem else None,
        oom_kills=m.memory_events.oom_kill if m.HasField("memory_events") else None,
        pids_current=m.pids.current if m.HasField("pids") else None,
        pids_max=_limit(m.pids.limit) if m.HasField("pids") else None,
        io=tuple(
            sorted(
                (
                    IoDeviceStats(e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios)
                    for e in m.io.usage
                ),
                key=lambda d: (d.major, d.minor),
            )
        ),
        psi_cpu=_psi(cpu.psi) if cpu is not None and cpu.HasField("psi") else None,
        psi_memory=_psi(mem.psi) if mem is not None and mem.HasField("psi") else None,
        psi_io=_psi(m.io.psi) if m.HasField("io") and m.io.HasField("psi") else None,
    )
