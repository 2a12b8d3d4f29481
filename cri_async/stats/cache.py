"""StatsCache: container and pod stats, refreshed in the background, read without waiting.

A refresher task reads every tracked cgroup (and each pod's ``/proc/net/dev`` inside its
netns) in **one** ``asyncio.to_thread`` call per refresh, then swaps the new samples in on
the event loop. ``get``/``get_pod`` are plain dictionary lookups: they never wait for a
refresh, a slow file or a container operation. The cache keeps the previous CPU reading of
each cgroup so ``usage_nano_cores`` is Δ usage_core_nano_seconds / Δ monotonic time between
the last two samples (``None`` on the first sample or after a counter reset).

Writable-layer usage walks a directory tree, so it is recomputed only every
``fs_interval`` seconds per container (inside the same worker batch).

Defaults: refresh every 5 s (kubelet's eviction manager and metrics-server poll every 10-15
s, so their readings are at most one interval old and the CPU rate spans 5 s); fs every 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from cri_async.core.stats import (
    ContainerSample,
    CpuStats,
    FilesystemStats,
    IoStats,
    MemoryStats,
    NetworkStats,
    PodSample,
    ProcessStats,
    SwapStats,
)

from .cgroups import CgroupReader
from .cgroupstats import CgroupStats
from .fsusage import dir_usage, mountpoint_of
from .network import parse_netdev, read_netdev_in_netns

log = logging.getLogger("cri_async.stats")

DEFAULT_INTERVAL = 5.0
DEFAULT_FS_INTERVAL = 60.0
NS_PER_S = 1_000_000_000

_S = TypeVar("_S", ContainerSample, PodSample)


class CgroupSource(Protocol):
    """What the cache needs from :class:`CgroupReader` (tests inject fakes)."""

    def read(self, cgroups_path: str) -> CgroupStats | None: ...


# -- pure conversions: a cgroup reading to CRI-shaped stats ----------------------------------


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


# -- the cache ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Container:
    cgroups_path: str
    sandbox_id: str
    writable_layer: str | None
    token: int
    sample: ContainerSample | None = None
    previous: ContainerSample | None = None
    mark: CpuMark | None = None
    fs: FilesystemStats | None = None
    fs_due: int = 0  # monotonic ns


@dataclass(slots=True)
class _Pod:
    cgroup_parent: str
    netns_path: str | None
    token: int
    sample: PodSample | None = None
    mark: CpuMark | None = None


@dataclass(frozen=True, slots=True)
class _ContainerJob:
    id: str
    token: int
    cgroups_path: str
    writable_layer: str | None  # set only when the fs walk is due


@dataclass(frozen=True, slots=True)
class _PodJob:
    id: str
    token: int
    cgroup_parent: str
    netns_path: str | None


@dataclass(frozen=True, slots=True)
class _Reading:
    monotonic_ns: int
    wall_ns: int
    cgroup: CgroupStats | None
    fs: FilesystemStats | None = None
    fs_done: bool = False
    network: NetworkStats | None = None


class StatsCache:
    def __init__(
        self,
        reader: CgroupSource | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        fs_interval: float = DEFAULT_FS_INTERVAL,
        netdev_reader: Callable[[str], str] = read_netdev_in_netns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        time_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._reader = reader
        self.interval = interval
        self.fs_interval = fs_interval
        self._netdev_reader = netdev_reader
        self._monotonic_ns = monotonic_ns
        self._time_ns = time_ns
        self._containers: dict[str, _Container] = {}
        self._pods: dict[str, _Pod] = {}
        self._tokens = itertools.count(1)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._mountpoints: dict[str, str] = {}

    # -- tracking (synchronous, cheap) --

    def track(
        self,
        container_id: str,
        cgroups_path: str,
        sandbox_id: str,
        *,
        writable_layer: str | None = None,
    ) -> None:
        """Start sampling a container. Re-tracking with other arguments resets its history."""
        cur = self._containers.get(container_id)
        if (
            cur is not None
            and cur.cgroups_path == cgroups_path
            and cur.sandbox_id == sandbox_id
            and cur.writable_layer == writable_layer
        ):
            return
        self._containers[container_id] = _Container(
            cgroups_path, sandbox_id, writable_layer, next(self._tokens)
        )

    def track_pod(self, sandbox_id: str, cgroup_parent: str, netns_path: str | None) -> None:
        """Start sampling a pod: its cgroup parent ("" for none) and netns path (None for the
        host network, whose counters are not the pod's)."""
        cur = self._pods.get(sandbox_id)
        if cur is not None and (cur.cgroup_parent, cur.netns_path) == (cgroup_parent, netns_path):
            return
        self._pods[sandbox_id] = _Pod(cgroup_parent, netns_path, next(self._tokens))

    def untrack(self, id: str) -> None:
        """Forget a container, or a pod together with its containers. Unknown ids are fine;
        a refresh running meanwhile does not bring them back."""
        self._containers.pop(id, None)
        if self._pods.pop(id, None) is not None:
            for cid in [c for c, e in self._containers.items() if e.sandbox_id == id]:
                del self._containers[cid]

    # -- reads (never wait) --

    def get(self, container_id: str) -> ContainerSample | None:
        e = self._containers.get(container_id)
        return None if e is None else e.sample

    def previous(self, container_id: str) -> ContainerSample | None:
        """The sample before the current one (the cache keeps two)."""
        e = self._containers.get(container_id)
        return None if e is None else e.previous

    def get_pod(self, sandbox_id: str) -> PodSample | None:
        p = self._pods.get(sandbox_id)
        return None if p is None else p.sample

    def containers(self, sandbox_id: str | None = None) -> list[ContainerSample]:
        return [
            e.sample
            for e in self._containers.values()
            if e.sample is not None and (sandbox_id is None or e.sandbox_id == sandbox_id)
        ]

    def pods(self) -> list[PodSample]:
        return [p.sample for p in self._pods.values() if p.sample is not None]

    # -- refreshing --

    async def refresh_now(self) -> None:
        """One full refresh (waits for one in progress first)."""
        async with self._lock:
            await self._refresh()

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="cri-stats-refresh")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> StatsCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh_now()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stats refresh failed")
            await asyncio.sleep(self.interval)

    def _source(self) -> CgroupSource:
        if self._reader is None:
            self._reader = CgroupReader.detect()
        return self._reader

    async def _refresh(self) -> None:
        now = self._monotonic_ns()
        cjobs = [
            _ContainerJob(
                cid,
                e.token,
                e.cgroups_path,
                e.writable_layer if e.writable_layer and now >= e.fs_due else None,
            )
            for cid, e in self._containers.items()
        ]
        pjobs = [
            _PodJob(sid, p.token, p.cgroup_parent, p.netns_path) for sid, p in self._pods.items()
        ]
        if not cjobs and not pjobs:
            return
        creads, preads = await asyncio.to_thread(self._collect, cjobs, pjobs)
        self._apply(cjobs, creads, pjobs, preads)

    # Worker thread: blocking reads only; no shared state but the mount point memo.

    def _read_cgroup(self, path: str) -> CgroupStats | None:
        if not path:
            return None
        try:
            return self._source().read(path)
        except Exception as e:
            log.warning("reading cgroup %s: %s", path, e)
            return None

    def _collect(
        self, cjobs: list[_ContainerJob], pjobs: list[_PodJob]
    ) -> tuple[list[_Reading], list[_Reading]]:
        creads = []
        for j in cjobs:
            mono, wall = self._monotonic_ns(), self._time_ns()
            r = _Reading(mono, wall, self._read_cgroup(j.cgroups_path))
            if j.writable_layer:
                r = replace(r, fs=self._fs(j.writable_layer, wall), fs_done=True)
            creads.append(r)
        preads = []
        for p in pjobs:
            mono, wall = self._monotonic_ns(), self._time_ns()
            net = None
            if p.netns_path:
                try:
                    net = NetworkStats(wall, parse_netdev(self._netdev_reader(p.netns_path)))
                except OSError as e:  # the pod is going away, typically
                    log.debug("reading network stats of pod %s: %s", p.id, e)
                except Exception as e:
                    log.warning("reading network stats of pod %s: %s", p.id, e)
            preads.append(_Reading(mono, wall, self._read_cgroup(p.cgroup_parent), network=net))
        return creads, preads

    def _fs(self, path: str, wall: int) -> FilesystemStats | None:
        try:
            mp = self._mountpoints.get(path)
            if mp is None:
                mp = self._mountpoints[path] = mountpoint_of(path)
            u = dir_usage(path)
        except OSError as e:
            log.debug("writable layer usage of %s: %s", path, e)
            return None
        return FilesystemStats(wall, mp, u.used_bytes, u.inodes_used)

    # Event loop: swap the results in, for ids still tracked under the same token.

    def _apply(
        self,
        cjobs: list[_ContainerJob],
        creads: list[_Reading],
        pjobs: list[_PodJob],
        preads: list[_Reading],
    ) -> None:
        for cj, r in zip(cjobs, creads, strict=True):
            e = self._containers.get(cj.id)
            if e is None or e.token != cj.token:
                continue
            if r.fs_done:
                e.fs = r.fs
                e.fs_due = r.monotonic_ns + int(self.fs_interval * NS_PER_S)
            sample = ContainerSample(
                container_id=cj.id,
                sandbox_id=e.sandbox_id,
                cgroups_path=e.cgroups_path,
                timestamp=r.wall_ns,
                writable_layer=e.fs,
            )
            if r.cgroup is not None:
                rate, e.mark = self._rate(e.mark, r)
                sample = self._fill(sample, r.cgroup, r.wall_ns, rate)
            e.previous, e.sample = e.sample, sample
        for pj, r in zip(pjobs, preads, strict=True):
            p = self._pods.get(pj.id)
            if p is None or p.token != pj.token:
                continue
            members = tuple(self.containers(pj.id))
            psample = PodSample(
                sandbox_id=pj.id,
                cgroup_parent=p.cgroup_parent,
                timestamp=r.wall_ns,
                network=r.network,
                containers=members,
            )
            if r.cgroup is not None:
                rate, p.mark = self._rate(p.mark, r)
                psample = self._fill(psample, r.cgroup, r.wall_ns, rate)
            else:
                cpu, mem, proc = aggregate(members, r.wall_ns)
                psample = replace(psample, cpu=cpu, memory=mem, process=proc)
            p.sample = psample

    @staticmethod
    def _rate(mark: CpuMark | None, r: _Reading) -> tuple[int | None, CpuMark | None]:
        assert r.cgroup is not None
        if r.cgroup.cpu_usage_ns is None:
            return None, None
        cur = CpuMark(r.monotonic_ns, r.cgroup.cpu_usage_ns)
        return nano_cores(mark, cur), cur

    @staticmethod
    def _fill(sample: _S, c: CgroupStats, ts: int, rate: int | None) -> _S:
        return replace(
            sample,
            cpu=cpu_stats(c, ts, rate),
            memory=memory_stats(c, ts),
            swap=swap_stats(c, ts),
            io=io_stats(c, ts),
            process=process_stats(c, ts),
        )
