"""A cgroup reading as CRI-shaped samples (pure): CPU (with the usage rate between two
readings), memory, swap, I/O and process counts; pod totals summed over containers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cri_async.core.stats import (
    ContainerSample,
    CpuStats,
    IoStats,
    MemoryStats,
    ProcessStats,
    SwapStats,
)

from .cgroupstats import CgroupStats

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class CpuMark:
    """A cumulative CPU reading at a monotonic instant, for the rate of the next sample."""

    monotonic_ns: int
    usage_ns: int


def nano_cores(prev: CpuMark | None, cur: CpuMark) -> int | None:
    if prev is None:
        return None
    dt = cur.monotonic_ns - prev.monotonic_ns
    du = cur.usage_ns - prev.usage_ns
    if dt <= 0 or du < 0:
        return None
    return du * NS_PER_S // dt


def cpu_stats(r: CgroupStats, ts: int, rate: int | None) -> CpuStats | None:
    if r.cpu_usage_ns is None:
        return None
    return CpuStats(
        timestamp=ts,
        usage_core_nano_seconds=r.cpu_usage_ns,
        usage_nano_cores=rate,
        user_nano_seconds=r.cpu_user_ns,
        system_nano_seconds=r.cpu_system_ns,
        cfs_periods=r.cpu_periods,
        cfs_throttled_periods=r.cpu_throttled_periods,
        cfs_throttled_nano_seconds=r.cpu_throttled_ns,
        psi=r.psi_cpu,
    )


def memory_stats(r: CgroupStats, ts: int) -> MemoryStats | None:
    if r.memory_usage is None or r.memory_working_set is None:
        return None
    ws = r.memory_working_set
    return MemoryStats(
        timestamp=ts,
        working_set_bytes=ws,
        available_bytes=None if r.memory_limit is None else max(r.memory_limit - ws, 0),
        usage_bytes=r.memory_usage,
        rss_bytes=r.memory_rss,
        page_faults=r.pgfault,
        major_page_faults=r.pgmajfault,
        cache_bytes=r.memory_cache,
        mapped_file_bytes=r.memory_mapped_file,
        limit_bytes=r.memory_limit,
        oom_kills=r.oom_kills,
        psi=r.psi_memory,
    )


def swap_stats(r: CgroupStats, ts: int) -> SwapStats | None:
    if r.swap_usage is None:
        return None
    avail = None if r.swap_limit is None else max(r.swap_limit - r.swap_usage, 0)
    return SwapStats(timestamp=ts, swap_usage_bytes=r.swap_usage, swap_available_bytes=avail)


def io_stats(r: CgroupStats, ts: int) -> IoStats:
    return IoStats(timestamp=ts, devices=r.io, psi=r.psi_io)


def process_stats(r: CgroupStats, ts: int) -> ProcessStats | None:
    if r.pids_current is None:
        return None
    return ProcessStats(timestamp=ts, process_count=r.pids_current, process_limit=r.pids_max)


def _sum(values: Iterable[int | None]) -> int | None:
    vs = list(values)
    return None if not vs or any(v is None for v in vs) else sum(v for v in vs if v is not None)


def aggregate(
    samples: tuple[ContainerSample, ...], ts: int
) -> tuple[CpuStats | None, MemoryStats | None, ProcessStats | None]:
    """Pod cpu/memory/process as sums over its containers (when the pod cgroup is unknown)."""
    cpus = [s.cpu for s in samples if s.cpu is not None]
    mems = [s.memory for s in samples if s.memory is not None]
    procs = [s.process for s in samples if s.process is not None]
    cpu = mem = proc = None
    if cpus:
        cpu = CpuStats(
            timestamp=ts,
            usage_core_nano_seconds=sum(c.usage_core_nano_seconds for c in cpus),
            usage_nano_cores=_sum(c.usage_nano_cores for c in cpus),
        )
    if mems:
        mem = MemoryStats(
            timestamp=ts,
            working_set_bytes=sum(m.working_set_bytes for m in mems),
            available_bytes=None,
            usage_bytes=sum(m.usage_bytes for m in mems),
            rss_bytes=_sum(m.rss_bytes for m in mems),
            page_faults=_sum(m.page_faults for m in mems),
            major_page_faults=_sum(m.major_page_faults for m in mems),
        )
    if procs:
        proc = ProcessStats(timestamp=ts, process_count=sum(p.process_count for p in procs))
    return cpu, mem, proc
