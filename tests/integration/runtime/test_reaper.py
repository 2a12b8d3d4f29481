"""The subreaper: double-forked conmons and other orphans are reaped at once, while asyncio
keeps receiving the exit codes of the processes it spawned."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from cri_async.monitor import reaper as reaper_mod
from cri_async.monitor.reaper import Reaper, is_subreaper, owned_pids
from tests.support.poll import until
from tests.support.procs import proc_state

from .conftest import Env


def zombie_children() -> list[int]:
    out = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split() if proc_state(int(p)) == "Z"]
    return out


async def wait_gone(pid: int, timeout: float = 2.0) -> float:
    t0 = time.monotonic()
    await until(
        lambda: proc_state(pid) is None, timeout=timeout, interval=0.002, what=f"{pid} reaped"
    )
    return time.monotonic() - t0


async def sh(script: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


async def test_conmon_is_reaped_promptly(env: Env) -> None:
    assert is_subreaper() and env.reaper.tracking
    ctr = await env.run("reap", ["sleep", "100"])
    conmon_pid = env.conmon.conmon_pid(ctr.bundle)
    assert conmon_pid is not None
    # The double-forked conmon was re-parented to us, not to PID 1.
    with open(f"/proc/{conmon_pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    await env.runtime.kill(ctr.cid, signal.SIGKILL)
    await env.wait_exit(ctr)
    # PID 1 on this machine takes about a second to reap orphans; we must not.
    assert await wait_gone(conmon_pid) < 0.1
    assert conmon_pid in [pid for pid, _ in env.reaper.reaped]
    assert zombie_children() == []
    await env.remove(ctr)


async def test_asyncio_exit_codes_survive_reaping(env: Env) -> None:
    ctrs = [await env.run(f"many{i}", ["sh", "-c", f"sleep 0.{i}"]) for i in range(1, 4)]
    # Orphans nobody adopted: sh exits at once, its background sleeps are re-parented to us.
    # The short one is reaped by a sweep, the long one (alive at a sweep) by its pidfd.
    rc, out = await sh("sleep 0.1 & echo $!; sleep 0.9 & echo $!")
    assert rc == 0
    short, long = (int(p) for p in out.split())
    # Many short-lived asyncio children exiting while conmons and orphans are being reaped.
    codes = [i % 7 for i in range(40)]
    results = await asyncio.gather(
        *(sh(f"sleep 0.0{i % 5}; exit {c}") for i, c in enumerate(codes))
    )
    assert [rc for rc, _ in results] == codes
    for ctr in ctrs:
        assert (await env.wait_exit(ctr)).exit_code == 0
    await wait_gone(short)
    await wait_gone(long)
    # Both reaped by us, with their real exit codes (how soon is a benchmark's business).
    assert {(short, 0), (long, 0)} <= set(env.reaper.reaped)
    for ctr in ctrs:
        await env.wait_conmon_gone(ctr)
        await env.remove(ctr)
    assert zombie_children() == []
    assert owned_pids() == frozenset()


async def test_adopted_only_mode_leaves_other_zombies(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a findable asyncio watcher (e.g. uvloop) only adopted pids are reaped."""
    env.reaper.close()
    monkeypatch.setattr(reaper_mod, "_asyncio_watcher", lambda loop: None)
    reaper = Reaper()
    reaper.start()
    env.reaper = env.conmon.reaper = reaper
    try:
        assert not reaper.tracking
        ctr = await env.run("adopt", ["true"])
        _, out = await sh("sleep 0.05 & echo $!")
        orphan = int(out)
        await env.wait_exit(ctr)
        await env.wait_conmon_gone(ctr)  # adopted by Conmon.create: reaped
        await until(lambda: proc_state(orphan) == "Z", what=f"orphan {orphan} to exit")
        assert reaper.sweep() == 0  # what the periodic sweep does: not adopted, left alone
        assert proc_state(orphan) == "Z"
        assert await reaper.adopt(orphan) == 0
        assert proc_state(orphan) is None
        await env.remove(ctr)
    finally:
        reaper.close()
