"""The cache against a real cgroup v1 group on this machine (root; a hybrid v1 host).

A busy child that allocates 20 MiB is moved into ``cri-stats-test/<id>`` of the cpu, cpuacct,
memory and pids hierarchies (and the cgroup2 mount, if any, for PSI). Two refreshes later the
CPU counter must have grown, the rate must be positive and the working set must be near
20 MiB. Without root or v1 controllers the test skips, except with ``CI=true``: then it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_async.stats.cache import StatsCache
from cri_async.stats.cgroups import CgroupReader
from tests.support.prereq import need_root, unavailable

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
PARENT = "cri-stats-test"
MiB = 1 << 20
# Allocate only after being moved: v1 memory charges stay where a page was first touched.
CHILD = r"""
import sys, time
sys.stdin.readline()
buf = bytearray(b"\x01") * (20 << 20)
print("ready", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    pass
"""


@pytest.fixture
def v1_group() -> Iterator[tuple[CgroupReader, str, list[Path]]]:
    need_root()
    try:
        reader = CgroupReader.detect()
    except ValueError as e:
        unavailable(str(e))
    layout = reader.layout
    missing = [c for c in CONTROLLERS if c not in layout.v1]
    if missing:
        unavailable(f"no cgroup v1 hierarchy for {missing} (layout {layout.mode})")
    name = uuid.uuid4().hex[:12]
    roots = [Path(layout.v1[c]) for c in CONTROLLERS]
    if layout.unified:
        roots.append(Path(layout.unified))
    dirs = [r / PARENT / name for r in roots]
    try:
        for d in dirs:
            d.mkdir(parents=True)
        yield reader, f"/{PARENT}/{name}", dirs
    finally:
        for d in dirs:
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()
            with contextlib.suppress(OSError):  # busy when another run uses it
                d.parent.rmdir()


async def test_live_v1_cgroup(v1_group: tuple[CgroupReader, str, list[Path]]) -> None:
    reader, path, dirs = v1_group
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        for d in dirs:
            (d / "cgroup.procs").write_text(str(child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        assert line.strip() == "ready"

        cache = StatsCache(reader)
        cache.track("live", path, "pod-live")
        cache.track_pod("pod-live", f"/{PARENT}", None)
        await cache.refresh_now()
        first = cache.get("live")
        await asyncio.sleep(0.5)
        await cache.refresh_now()
        second = cache.get("live")
    finally:
        child.kill()
        child.wait()

    assert first is not None and second is not None
    assert first.cpu is not None and second.cpu is not None
    assert second.cpu.usage_core_nano_seconds > first.cpu.usage_core_nano_seconds
    assert second.cpu.usage_nano_cores is not None
    assert second.cpu.usage_nano_cores > 50_000_000  # a busy loop: close to 1 core
    assert second.cpu.user_nano_seconds is not None

    mem = second.memory
    assert mem is not None
    assert 18 * MiB <= mem.working_set_bytes <= 80 * MiB, mem
    assert mem.usage_bytes >= mem.working_set_bytes
    assert mem.rss_bytes is not None and mem.rss_bytes >= 18 * MiB
    assert mem.limit_bytes is None and mem.available_bytes is None

    assert second.process is not None and second.process.process_count >= 1

    unified = reader.layout.unified
    if unified and Path(unified, PARENT, dirs[0].name, "cpu.pressure").exists():
        assert second.cpu.psi is not None and second.memory is not None
        assert second.memory.psi is not None

    pod = cache.get_pod("pod-live")
    assert pod is not None and pod.cpu is not None and pod.memory is not None
    # The parent group is hierarchical: it holds at least what its child used.
    assert pod.cpu.usage_core_nano_seconds >= second.cpu.usage_core_nano_seconds
    assert pod.memory.usage_bytes >= 18 * MiB
    assert [c.container_id for c in pod.containers] == ["live"]
    assert os.path.isdir(dirs[0])  # cleanup is the fixture's
