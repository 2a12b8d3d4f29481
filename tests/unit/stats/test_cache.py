"""StatsCache semantics with injected readers and clocks: rates from two samples, reads that
never wait for a refresh, untracking, pod aggregation and the writable-layer walk."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cri_async.core.stats import MemoryStats, SwapStats
from cri_async.stats.cache import StatsCache
from cri_async.stats.cgroupstats import CgroupStats, stats_from_v2
from cri_async.stats.samples import CpuMark, nano_cores
from tests.support.poll import until

from .support import FIXTURES, fixture_files

S = 1_000_000_000


class FakeReader:
    def __init__(self) -> None:
        self.stats: dict[str, CgroupStats] = {}
        self.delay = 0.0
        self.started = threading.Event()
        self.release = threading.Event()
        self.block = False
        self.calls: list[str] = []
        self.threads: set[int] = set()

    def set(self, path: str, usage_ns: int, **kw: int | None) -> None:
        self.stats[path] = CgroupStats(version=2, cpu_usage_ns=usage_ns, **kw)  # type: ignore[arg-type]

    def read(self, path: str) -> CgroupStats | None:
        self.calls.append(path)
        self.threads.add(threading.get_ident())
        self.started.set()
        if self.block:
            self.release.wait(10)
        if self.delay:
            time.sleep(self.delay)
        return self.stats.get(path)


class Clock:
    def __init__(self) -> None:
        self.mono = 1_000 * S
        self.wall = 1_700_000_000 * S

    def monotonic_ns(self) -> int:
        return self.mono

    def time_ns(self) -> int:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * S)
        self.wall += int(seconds * S)


def make(reader: FakeReader, clock: Clock | None = None, **kw: object) -> StatsCache:
    if clock is None:
        return StatsCache(reader, **kw)  # type: ignore[arg-type]
    return StatsCache(
        reader,
        monotonic_ns=clock.monotonic_ns,
        time_ns=clock.time_ns,
        **kw,  # type: ignore[arg-type]
    )


def test_nano_cores() -> None:
    assert nano_cores(None, CpuMark(10, 10)) is None
    assert nano_cores(CpuMark(0, 0), CpuMark(2 * S, S)) == S // 2
    assert nano_cores(CpuMark(0, 5 * S), CpuMark(S, S)) is None  # counter went backwards
    assert nano_cores(CpuMark(S, 0), CpuMark(S, S)) is None  # no time passed


async def test_usage_nano_cores_from_two_samples() -> None:
    reader, clock = FakeReader(), Clock()
    cache = make(reader, clock)
    cache.track("c1", "/kubepods/pod1/c1", "pod1")
    assert cache.get("c1") is None  # nothing read yet

    reader.set("/kubepods/pod1/c1", 10 * S)
    await cache.refresh_now()
    first = cache.get("c1")
    assert first is not None and first.cpu is not None
    assert first.cpu.usage_core_nano_seconds == 10 * S
    assert first.cpu.usage_nano_cores is None  # one sample: no rate yet
    assert first.timestamp == clock.wall and first.sandbox_id == "pod1"

    clock.advance(4)
    reader.set("/kubepods/pod1/c1", 13 * S)  # 3 CPU-seconds in 4 s: 0.75 cores
    await cache.refresh_now()
    second = cache.get("c1")
    assert second is not None and second.cpu is not None
    assert second.cpu.usage_nano_cores == 750_000_000
    assert cache.previous("c1") == first

    clock.advance(1)
    reader.set("/kubepods/pod1/c1", 1 * S)  # re-created cgroup: the counter restarted
    await cache.refresh_now()
    third = cache.get("c1")
    assert third is not None and third.cpu is not None and third.cpu.usage_nano_cores is None


async def test_retrack_with_another_path_resets_history() -> None:
    reader, clock = FakeReader(), Clock()
    cache = make(reader, clock)
    reader.set("/a", S)
    reader.set("/b", 2 * S)
    cache.track("c1", "/a", "pod1")
    await cache.refresh_now()
    cache.track("c1", "/a", "pod1")  # same arguments: history kept
    clock.advance(1)
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.cpu is not None and s.cpu.usage_nano_cores == 0
    cache.track("c1", "/b", "pod1")
    assert cache.get("c1") is None
    clock.advance(1)
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.cpu is not None
    assert (s.cgroups_path, s.cpu.usage_core_nano_seconds, s.cpu.usage_nano_cores) == (
        "/b",
        2 * S,
        None,
    )


async def test_reads_do_not_wait_for_a_slow_refresh() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    cache = make(reader)
    cache.track("c1", "/c1", "pod1")
    await cache.refresh_now()
    old = cache.get("c1")
    assert old is not None

    reader.block = True
    reader.started.clear()
    refresh = asyncio.create_task(cache.refresh_now())
    assert await asyncio.to_thread(reader.started.wait, 5)

    t0 = time.monotonic()
    for _ in range(5):
        assert cache.get("c1") is old  # the previous sample, immediately
        await asyncio.sleep(0.01)  # and the event loop keeps running
    assert time.monotonic() - t0 < 1.0
    assert not refresh.done()

    reader.release.set()
    await asyncio.wait_for(refresh, 5)
    new = cache.get("c1")
    assert new is not None and new is not old


async def test_one_worker_thread_call_per_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = FakeReader()
    cache = make(reader, netdev_reader=lambda p: (FIXTURES / "netdev-host").read_text())
    for i in range(3):
        reader.set(f"/c{i}", S)
        cache.track(f"c{i}", f"/c{i}", "pod1")
    cache.track_pod("pod1", "/pod1", "/run/netns/x")
    calls = 0
    real = asyncio.to_thread

    async def counting(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    await cache.refresh_now()
    assert calls == 1
    assert sorted(reader.calls) == ["/c0", "/c1", "/c2", "/pod1"]
    assert threading.get_ident() not in reader.threads


async def test_untrack() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    reader.set("/c2", S)
    cache = make(reader)
    cache.track("c1", "/c1", "pod1")
    cache.track("c2", "/c2", "pod2")
    await cache.refresh_now()
    assert cache.get("c1") is not None

    cache.untrack("c1")
    cache.untrack("never-tracked")
    assert cache.get("c1") is None
    reader.calls.clear()
    await cache.refresh_now()
    assert cache.get("c1") is None and reader.calls == ["/c2"]
    assert [s.container_id for s in cache.containers()] == ["c2"]


async def test_untrack_during_refresh_is_not_undone() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    cache = make(reader)
    cache.track("c1", "/c1", "pod1")
    reader.block = True
    refresh = asyncio.create_task(cache.refresh_now())
    assert await asyncio.to_thread(reader.started.wait, 5)
    cache.untrack("c1")
    reader.release.set()
    await asyncio.wait_for(refresh, 5)
    assert cache.get("c1") is None
    assert cache.containers() == []


async def test_untracking_a_pod_drops_its_containers() -> None:
    reader = FakeReader()
    cache = make(reader, netdev_reader=lambda p: "")
    cache.track_pod("pod1", "", None)
    cache.track("c1", "/c1", "pod1")
    cache.track("c2", "/c2", "pod2")
    cache.untrack("pod1")
    await cache.refresh_now()
    assert cache.get_pod("pod1") is None
    assert [s.container_id for s in cache.containers()] == ["c2"]


async def test_vanished_cgroup_gives_an_empty_sample() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    cache = make(reader)
    cache.track("c1", "/c1", "pod1")
    await cache.refresh_now()
    del reader.stats["/c1"]
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None
    assert (s.cpu, s.memory, s.process) == (None, None, None)


async def test_memory_and_swap_from_a_v2_reading() -> None:
    reader = FakeReader()
    reader.stats["/c1"] = stats_from_v2(fixture_files("v2"))
    cache = make(reader)
    cache.track("c1", "/c1", "pod1")
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.memory is not None
    ts = s.timestamp
    ws = 52_953_088 - 12_406_784
    assert s.memory == MemoryStats(
        timestamp=ts,
        working_set_bytes=ws,
        available_bytes=134_217_728 - ws,
        usage_bytes=52_953_088,
        rss_bytes=31_899_648,
        page_faults=41_233,
        major_page_faults=118,
        cache_bytes=18_579_456,
        mapped_file_bytes=10_407_936,
        limit_bytes=134_217_728,
        oom_kills=1,
        psi=reader.stats["/c1"].psi_memory,
    )
    assert s.swap == SwapStats(ts, swap_usage_bytes=1_048_576, swap_available_bytes=None)
    assert s.process is not None and (s.process.process_count, s.process.process_limit) == (7, None)
    assert s.io is not None and len(s.io.devices) == 2 and s.io.psi is not None
    assert s.cpu is not None and s.cpu.cfs_throttled_periods == 37

    # A limit below the working set does not make availability negative.
    reader.stats["/c1"] = replace(reader.stats["/c1"], memory_limit=1, swap_limit=4 << 20)
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.memory is not None and s.memory.available_bytes == 0
    assert s.swap is not None and s.swap.swap_available_bytes == 3 << 20


async def test_pod_from_its_cgroup_with_network() -> None:
    reader, clock = FakeReader(), Clock()
    seen: list[str] = []

    def netdev(path: str) -> str:
        seen.append(path)
        return (FIXTURES / "netdev-host").read_text()

    cache = make(reader, clock, netdev_reader=netdev)
    reader.set("/kubepods/pod1", 5 * S, memory_usage=1000, memory_working_set=800)
    reader.set("/kubepods/pod1/c1", 2 * S)
    cache.track_pod("pod1", "/kubepods/pod1", "/run/netns/pod1")
    cache.track("c1", "/kubepods/pod1/c1", "pod1")
    await cache.refresh_now()
    clock.advance(2)
    reader.set("/kubepods/pod1", 6 * S, memory_usage=1000, memory_working_set=800)
    await cache.refresh_now()

    pod = cache.get_pod("pod1")
    assert pod is not None and pod.cpu is not None and pod.memory is not None
    assert pod.cpu.usage_core_nano_seconds == 6 * S
    assert pod.cpu.usage_nano_cores == S // 2
    assert pod.memory.working_set_bytes == 800
    assert [c.container_id for c in pod.containers] == ["c1"]
    assert pod.containers[0] == cache.get("c1")
    assert pod.network is not None and pod.network.default_interface is not None
    assert pod.network.default_interface.rx_bytes == 799_925_904
    assert seen == ["/run/netns/pod1"] * 2
    assert cache.pods() == [pod]


async def test_pod_without_cgroup_sums_its_containers() -> None:
    reader, clock = FakeReader(), Clock()

    def broken(path: str) -> str:
        raise FileNotFoundError(path)

    cache = make(reader, clock, netdev_reader=broken)
    cache.track_pod("pod1", "", "/run/netns/gone")
    for cid, usage, ws in (("a", 1, 100), ("b", 2, 200)):
        reader.set(f"/{cid}", usage * S, memory_usage=ws * 2, memory_working_set=ws, pids_current=3)
        cache.track(cid, f"/{cid}", "pod1")
    await cache.refresh_now()
    clock.advance(1)
    reader.set("/a", 2 * S, memory_usage=200, memory_working_set=100, pids_current=3)
    await cache.refresh_now()
    pod = cache.get_pod("pod1")
    assert pod is not None and pod.cpu is not None and pod.memory is not None
    assert pod.cpu.usage_core_nano_seconds == 4 * S
    assert pod.cpu.usage_nano_cores == S  # a: 1 core, b: 0
    assert (pod.memory.working_set_bytes, pod.memory.usage_bytes) == (300, 600)
    assert pod.process is not None and pod.process.process_count == 6
    assert pod.network is None


async def test_reader_errors_do_not_stop_the_refresher() -> None:
    class Exploding(FakeReader):
        def read(self, path: str) -> CgroupStats | None:
            super().read(path)
            raise RuntimeError("boom")

    def explode(path: str) -> str:
        raise RuntimeError("netns boom")

    reader = Exploding()
    cache = make(reader, interval=0.01, netdev_reader=explode)
    cache.track("c1", "/c1", "pod1")
    cache.track_pod("pod1", "/pod1", "/run/netns/x")
    async with cache:
        await until(lambda: len(reader.calls) >= 6, what="several refreshes")
    s = cache.get("c1")
    assert s is not None and s.cpu is None
    pod = cache.get_pod("pod1")
    assert pod is not None and pod.network is None


async def test_background_refresh_start_close() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    cache = make(reader, interval=0.01)
    cache.track("c1", "/c1", "pod1")
    await cache.start()
    await cache.start()  # idempotent
    await until(lambda: len(reader.calls) >= 3, what="three refreshes")
    await cache.close()
    await cache.close()
    n = len(reader.calls)
    assert n >= 3 and cache.get("c1") is not None
    await asyncio.sleep(0.05)  # five refresh intervals in which nothing may run
    assert len(reader.calls) == n  # stopped


async def test_writable_layer_walked_every_fs_interval(tmp_path: Path) -> None:
    layer = tmp_path / "upper"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "a").write_bytes(b"x" * 10_000)
    os.link(layer / "etc" / "a", layer / "etc" / "a-link")  # counted once
    (layer / "link").symlink_to("/usr")  # not followed
    reader, clock = FakeReader(), Clock()
    reader.set("/c1", S)
    cache = make(reader, clock, fs_interval=60)
    cache.track("c1", "/c1", "pod1", writable_layer=str(layer))
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.writable_layer is not None
    first = s.writable_layer
    assert first.inodes_used == 4  # upper, etc, a, link
    assert first.used_bytes >= 10_000
    assert os.path.ismount(first.mountpoint)

    (layer / "etc" / "b").write_bytes(b"y" * 50_000)
    clock.advance(30)
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.writable_layer == first  # not due yet
    clock.advance(31)
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.writable_layer is not None
    assert s.writable_layer.inodes_used == 5
    assert s.writable_layer.used_bytes >= first.used_bytes + 50_000


async def test_missing_writable_layer() -> None:
    reader = FakeReader()
    cache = make(reader)
    cache.track("c1", "/c1", "pod1", writable_layer="/nonexistent/upper")
    await cache.refresh_now()
    s = cache.get("c1")
    assert s is not None and s.writable_layer is None


class FakeRemote:
    """A RemoteSource: the containers a shim reads, one of them failing, one too slow."""

    def __init__(self, owned: dict[str, CgroupStats | None]) -> None:
        self.owned = owned
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.hang: set[str] = set()

    def owns(self, container_id: str) -> bool:
        return container_id in self.owned

    async def read(self, container_id: str) -> CgroupStats | None:
        self.calls.append(container_id)
        if container_id in self.fail:
            raise ConnectionError("shim gone")
        if container_id in self.hang:
            await asyncio.Event().wait()
        return self.owned[container_id]


async def test_remote_source_reads_the_containers_it_owns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cri_async.stats.cache as cache_module

    monkeypatch.setattr(cache_module, "REMOTE_TIMEOUT", 0.05)
    reader, clock = FakeReader(), Clock()
    reader.set("/pod/host", 5 * S)
    reader.set("/pod/vm", 99 * S)  # the host's idea of a VM container: not what counts
    remote = FakeRemote(
        {
            "vm": CgroupStats(version=2, cpu_usage_ns=7 * S, memory_usage=4096),
            "gone": None,
            "broken": CgroupStats(version=2),
            "slow": CgroupStats(version=2),
        }
    )
    remote.fail.add("broken")
    remote.hang.add("slow")
    cache = make(reader, clock, remote=remote)
    for cid in ("host", "vm", "gone", "broken", "slow"):
        cache.track(cid, f"/pod/{cid}", "pod")
    await cache.refresh_now()
    host, vm = cache.get("host"), cache.get("vm")
    assert host is not None and host.cpu is not None and host.cpu.usage_core_nano_seconds == 5 * S
    assert vm is not None and vm.cpu is not None and vm.cpu.usage_core_nano_seconds == 7 * S
    assert sorted(remote.calls) == ["broken", "gone", "slow", "vm"]
    assert "/pod/vm" not in reader.calls and "/pod/host" in reader.calls
    for cid in ("gone", "broken", "slow"):  # a sample without numbers, never an error
        sample = cache.get(cid)
        assert sample is not None and sample.cpu is None


# -- on-demand freshness ----------------------------------------------------------------------


async def test_fresh_reads_a_container_tracked_since_the_last_refresh() -> None:
    reader, clock = FakeReader(), Clock()
    reader.set("/c1", S)
    reader.set("/c2", 2 * S)
    cache = make(reader, clock)
    cache.track("c1", "/c1", "pod1")
    await cache.refresh_now()
    cache.track("c2", "/c2", "pod1")  # started a moment ago: no reading yet
    reader.calls.clear()
    await cache.fresh()
    s = cache.get("c2")
    assert s is not None and s.cpu is not None and s.cpu.usage_core_nano_seconds == 2 * S
    assert reader.calls == ["/c2"]  # c1's reading is recent: not read again


async def test_fresh_rereads_what_is_older_than_max_age() -> None:
    """crictl stats: two calls a sample period apart must see two different readings."""
    reader, clock = FakeReader(), Clock()
    reader.set("/c1", S)
    cache = make(reader, clock, max_age=0.5)
    cache.track("c1", "/c1", "pod1")
    cache.track_pod("pod1", "", None)
    await cache.fresh()
    first = cache.get("c1")
    clock.advance(0.4)
    await cache.fresh()
    assert cache.get("c1") is first and len(reader.calls) == 1  # young enough
    clock.advance(0.2)
    reader.set("/c1", 2 * S)
    await cache.fresh()
    second = cache.get("c1")
    assert second is not None and first is not None and second.timestamp > first.timestamp
    assert second.cpu is not None and second.cpu.usage_nano_cores == S * S // (6 * S // 10)
    pod = cache.get_pod("pod1")
    assert pod is not None and pod.timestamp == second.timestamp


async def test_a_burst_of_stats_calls_reads_each_cgroup_once() -> None:
    reader = FakeReader()
    cache = make(reader)
    for i in range(3):
        reader.set(f"/c{i}", S)
        cache.track(f"c{i}", f"/c{i}", "pod1")
    reader.block = True
    calls = [asyncio.create_task(cache.fresh()) for _ in range(50)]
    assert await asyncio.to_thread(reader.started.wait, 5)
    reader.release.set()
    await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert sorted(reader.calls) == ["/c0", "/c1", "/c2"]  # one flight for all 50 callers
    assert all(cache.get(f"c{i}") is not None for i in range(3))


async def test_a_container_tracked_during_a_refresh_is_read_before_fresh_returns() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    reader.set("/c2", S)
    cache = make(reader)
    cache.track("c1", "/c1", "pod1")
    reader.block = True
    first = asyncio.create_task(cache.fresh())
    assert await asyncio.to_thread(reader.started.wait, 5)
    cache.track("c2", "/c2", "pod1")  # the flight under way does not know it
    second = asyncio.create_task(cache.fresh())
    reader.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert cache.get("c2") is not None and reader.calls == ["/c1", "/c2"]


async def test_a_stuck_read_does_not_hold_stats_calls() -> None:
    reader = FakeReader()
    reader.set("/c1", S)
    cache = make(reader, wait=0.05)
    cache.track("c1", "/c1", "pod1")
    await cache.refresh_now()
    old = cache.get("c1")
    cache.untrack("c1")
    cache.track("c1", "/c1b", "pod1")  # a new reading is due
    reader.block = True
    reader.started.clear()
    await asyncio.wait_for(cache.fresh(), 5)  # gave up waiting: answers from the cache
    assert await asyncio.to_thread(reader.started.wait, 5)
    assert cache.get("c1") is None and old is not None
    reader.release.set()
    await until(lambda: cache.get("c1") is not None, what="the refresh to finish on its own")
    await cache.close()
