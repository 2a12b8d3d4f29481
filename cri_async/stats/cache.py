"""StatsCache: container and pod stats, read from cgroups on demand and in the background.

Reads happen in a worker thread: one ``asyncio.to_thread`` call reads a batch of cgroups
(and each pod's ``/proc/net/dev`` inside its netns), then the new samples are swapped in on
the event loop, so stats never hold up other RPCs.

Freshness. A stats RPC first awaits :meth:`StatsCache.fresh`: every tracked container or
pod whose last reading is older than ``max_age`` (0.5 s), or that has none yet (a container
started a moment ago), is read again before the answer is built. Concurrent callers share
that one refresh (single flight), and a burst of calls within ``max_age`` reads nothing
more: one cgroup read per container however many clients ask. A refresh that takes longer
than ``wait`` (a stuck file) does not hold the RPC: it answers from what the cache has and
the refresh finishes in the background. So ``crictl stats`` (two calls 1 s apart) always
sees two different readings, and critest's just-started container has a sample.

Containers a ``RemoteSource`` owns (a VM's, whose numbers only its runtime's shim has) are
read from it on the event loop just before the batch, concurrently and each within a
deadline.

``get``/``get_pod`` are plain dictionary lookups. The cache keeps the previous CPU reading
of each cgroup so ``usage_nano_cores`` is Δ usage_core_nano_seconds / Δ monotonic time
between the last two readings (``None`` on the first one or after a counter reset).

A background refresh every ``interval`` seconds (10 s) keeps the samples that Prometheus
metrics and ImageFsInfo read current and walks the writable layers, whose usage is a
directory tree walk and so recomputed only every ``fs_interval`` seconds (60 s) per
container, never on a stats RPC's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from cri_async.core.stats import (
    ContainerSample,
    FilesystemStats,
    NetworkStats,
    PodSample,
)

from .cgroups import CgroupReader
from .cgroupstats import CgroupStats
from .fsusage import dir_usage, mountpoint_of
from .network import parse_netdev, read_netdev_in_netns
from .samples import (
    NS_PER_S,
    CpuMark,
    aggregate,
    cpu_stats,
    io_stats,
    memory_stats,
    nano_cores,
    process_stats,
    swap_stats,
)

log = logging.getLogger("cri_async.stats")

DEFAULT_INTERVAL = 10.0
DEFAULT_FS_INTERVAL = 60.0
DEFAULT_MAX_AGE = 0.5
DEFAULT_WAIT = 2.0
REMOTE_TIMEOUT = 5.0

_S = TypeVar("_S", ContainerSample, PodSample)


class CgroupSource(Protocol):
    """What the cache needs from :class:`CgroupReader` (tests inject fakes)."""

    def read(self, cgroups_path: str) -> CgroupStats | None: ...


class RemoteSource(Protocol):
    """Containers whose numbers the host's cgroups do not hold (a VM's, read through its
    runtime's shim): read on the event loop, each within ``REMOTE_TIMEOUT``."""

    def owns(self, container_id: str) -> bool: ...

    async def read(self, container_id: str) -> CgroupStats | None: ...


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
    read_at: int | None = None  # monotonic ns of the last reading


@dataclass(slots=True)
class _Pod:
    cgroup_parent: str
    netns_path: str | None
    token: int
    sample: PodSample | None = None
    mark: CpuMark | None = None
    read_at: int | None = None


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
    """``max_age``: the oldest reading a stats RPC is answered from; ``wait``: how long one
    waits for a refresh before answering from the cache (see the module's notes)."""

    def __init__(
        self,
        reader: CgroupSource | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        fs_interval: float = DEFAULT_FS_INTERVAL,
        max_age: float = DEFAULT_MAX_AGE,
        wait: float = DEFAULT_WAIT,
        remote: RemoteSource | None = None,
        netdev_reader: Callable[[str], str] = read_netdev_in_netns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        time_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._reader = reader
        self.interval = interval
        self.fs_interval = fs_interval
        self.max_age = max_age
        self.wait = wait
        self._remote = remote
        self._netdev_reader = netdev_reader
        self._monotonic_ns = monotonic_ns
        self._time_ns = time_ns
        self._containers: dict[str, _Container] = {}
        self._pods: dict[str, _Pod] = {}
        self._tokens = itertools.count(1)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._flight: asyncio.Task[None] | None = None
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
        """One full refresh, writable layers included (after one in progress)."""
        async with self._lock:
            await self._refresh(stale_only=False, walk_fs=True)

    async def fresh(self) -> None:
        """Return once every tracked container and pod has a reading at most ``max_age``
        old, reading the others now; concurrent callers share one refresh. Gives up
        waiting after ``wait`` seconds (the refresh goes on; the cache answers meanwhile)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait
        # A refresh already under way may predate a container tracked since: then the
        # next round reads what is still stale.
        for _ in range(2):
            if not self._stale():
                return
            flight = self._flight
            if flight is None or flight.done():
                flight = self._flight = asyncio.create_task(self._fly(), name="cri-stats-fresh")
            try:
                await asyncio.wait_for(asyncio.shield(flight), max(give_up - loop.time(), 0))
            except TimeoutError:
                log.warning(
                    "stats refresh takes longer than %gs; answering from the cache", self.wait
                )
                return

    async def _fly(self) -> None:
        try:
            async with self._lock:
                await self._refresh(stale_only=True, walk_fs=False)
        except Exception:
            log.exception("stats refresh failed")
        finally:
            self._flight = None

    def _is_stale(self, read_at: int | None, now: int) -> bool:
        return read_at is None or now - read_at > self.max_age * NS_PER_S

    def _stale(self) -> bool:
        now = self._monotonic_ns()
        return any(self._is_stale(e.read_at, now) for e in self._containers.values()) or any(
            self._is_stale(p.read_at, now) for p in self._pods.values()
        )

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="cri-stats-refresh")

    async def close(self) -> None:
        for task in (self._task, self._flight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._flight = None

    async def __aenter__(self) -> StatsCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh_now()
            except Exception:
                log.exception("stats refresh failed")
            await asyncio.sleep(self.interval)

    def _source(self) -> CgroupSource:
        if self._reader is None:
            self._reader = CgroupReader.detect()
        return self._reader

    async def _refresh(self, *, stale_only: bool, walk_fs: bool) -> None:
        """Read every tracked cgroup (``stale_only``: those older than ``max_age``), and the
        writable layers whose walk is due when ``walk_fs``."""
        now = self._monotonic_ns()
        cjobs = [
            _ContainerJob(
                cid,
                e.token,
                e.cgroups_path,
                e.writable_layer if walk_fs and e.writable_layer and now >= e.fs_due else None,
            )
            for cid, e in self._containers.items()
            if not stale_only or self._is_stale(e.read_at, now)
        ]
        pjobs = [
            _PodJob(sid, p.token, p.cgroup_parent, p.netns_path)
            for sid, p in self._pods.items()
            if not stale_only or self._is_stale(p.read_at, now)
        ]
        if not cjobs and not pjobs:
            return
        remote = await self._read_remote([j.id for j in cjobs])
        creads, preads = await asyncio.to_thread(self._collect, cjobs, pjobs, remote)
        self._apply(cjobs, creads, pjobs, preads)

    async def _read_remote(self, ids: list[str]) -> dict[str, CgroupStats | None]:
        """The remote source's readings of the containers it owns, concurrently."""
        source = self._remote
        if source is None:
            return {}
        owned = [cid for cid in ids if source.owns(cid)]

        async def one(cid: str) -> CgroupStats | None:
            try:
                return await asyncio.wait_for(source.read(cid), REMOTE_TIMEOUT)
            except Exception as e:
                log.warning("reading stats of %s: %r", cid, e)
                return None

        return dict(zip(owned, await asyncio.gather(*map(one, owned)), strict=True))

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
        self,
        cjobs: list[_ContainerJob],
        pjobs: list[_PodJob],
        remote: dict[str, CgroupStats | None],
    ) -> tuple[list[_Reading], list[_Reading]]:
        creads = []
        for j in cjobs:
            mono, wall = self._monotonic_ns(), self._time_ns()
            cgroup = remote[j.id] if j.id in remote else self._read_cgroup(j.cgroups_path)
            r = _Reading(mono, wall, cgroup)
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
            e.read_at = r.monotonic_ns
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
            p.read_at = r.monotonic_ns
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
