"""asyncio's children collected by pidfd on the event loop: right exit codes, no thread per
child, and the reaper still knows which pids asyncio owns."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import warnings

import pytest

from cri_async import proc
from cri_async.monitor.reaper import PidfdChildWatcher, owned_pids, use_pidfd_child_watcher

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ uses pidfds itself")


def watcher() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.get_event_loop_policy().get_child_watcher()


async def test_exit_codes_and_no_thread_per_child() -> None:
    use_pidfd_child_watcher()
    assert isinstance(watcher(), PidfdChildWatcher)
    threads = threading.active_count()
    results = await asyncio.gather(
        *(proc.run(["sh", "-c", f"sleep 0.2; exit {i}"], timeout=10) for i in range(20))
    )
    assert [r.returncode for r in results] == list(range(20))
    async with proc.started(["sleep", "30"]) as p:
        assert threading.active_count() == threads  # ThreadedChildWatcher: one per child
        p.send_signal(signal.SIGTERM)
        assert await p.wait() == -signal.SIGTERM
    use_pidfd_child_watcher()  # idempotent
    assert isinstance(watcher(), PidfdChildWatcher)


async def test_the_reaper_tracks_what_asyncio_owns() -> None:
    from cri_async.monitor.reaper import Reaper

    use_pidfd_child_watcher()
    async with Reaper():
        async with proc.started(["sleep", "30"]) as p:
            assert p.pid in owned_pids()
            p.kill()
            await p.wait()
        assert p.pid not in owned_pids()
