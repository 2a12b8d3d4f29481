"""Single-flight work in the puller: shared by concurrent pulls, stopped when nobody waits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cri_async.registry.content import ContentStore
from cri_async.registry.pull import Puller
from cri_async.registry.snapshots import SnapshotStore


def puller(tmp_path: Path) -> Puller:
    return Puller(None, ContentStore(tmp_path / "c"), SnapshotStore(tmp_path / "s"))


async def test_work_runs_once_for_concurrent_callers(tmp_path: Path) -> None:
    p = puller(tmp_path)
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    calls = [asyncio.ensure_future(p._once("k", work)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*calls) == [42, 42, 42] and runs == 1
    assert await p._once("k", work) == 42 and runs == 2  # done work is not cached


async def test_a_cancelled_caller_stops_work_nobody_else_waits_for(tmp_path: Path) -> None:
    p = puller(tmp_path)
    started, cleaned = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that takes a turn of the loop
            cleaned.set()

    caller = asyncio.ensure_future(p._once("k", work))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cleaned.is_set()  # the caller returned only after the work had cleaned up
    assert "k" not in p._flights


async def test_work_goes_on_while_another_caller_waits(tmp_path: Path) -> None:
    p = puller(tmp_path)
    gate, started = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        await gate.wait()
        return "done"

    first = asyncio.ensure_future(p._once("k", work))
    second = asyncio.ensure_future(p._once("k", work))
    await started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "done"
