"""Memory of a runtime (the daemon and its per-container monitors) and its restart time.

* ``memory``: the daemon's ``VmRSS`` and PSS (``smaps_rollup``: shared pages split among
  their users, so N monitors of one binary are not counted N times), and the same summed
  over the monitors: one conmon per container (cri-async), one containerd-shim per pod
  (containerd; the pause process is the pod's container, not counted);
* ``restart``: with the pods running, ``kill -9`` of the daemon, then at once a new process
  with the same config; the time from the kill to the first ``Status`` answered with
  RuntimeReady and NetworkReady (polled every 5 ms, each attempt a new connection), and to
  the first ``ListPodSandbox``/``ListContainers`` showing every pod ready and every
  container running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from criops import counts
from daemons import Daemon, wait_ready
from phases import Samples

from cri_async.client import CRIClient

MB = 1e6  # memory is reported in MB (10^6 bytes), the unit of the figures to reach


def rss_pss(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MB."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss * 1024 / MB, pss * 1024 / MB


def peak_rss(pid: int) -> float:
    """``VmHWM`` in MB: the process's peak RSS so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


def memory(d: Daemon, s: Samples, label: str) -> None:
    """Daemon and monitors' memory now, as ``mem.<label>.*`` (MB)."""
    rss, pss = rss_pss(d.pid)
    s.add(d.kind, f"mem.{label}.rss", rss)
    s.add(d.kind, f"mem.{label}.pss", pss)
    mons = d.monitors()
    mem = [rss_pss(p) for p in mons]
    s.add(d.kind, f"mem.{label}.monitors", float(len(mons)))
    s.add(d.kind, f"mem.{label}.monitors_rss", sum(m[0] for m in mem))
    s.add(d.kind, f"mem.{label}.monitors_pss", sum(m[1] for m in mem))


async def restart(d: Daemon, s: Samples, pods: int, containers: int) -> CRIClient:
    """kill -9, restart, time to ready and to every pod listed again; a new client."""
    t0 = time.perf_counter()
    d.kill9()
    d.spawn()
    ready = await wait_ready(d)
    s.add(d.kind, "restart.ready", time.perf_counter() - t0)
    s.add(d.kind, "restart.spawn_to_ready", ready)
    cli = CRIClient(d.socket)
    deadline = time.perf_counter() + 60
    last = (0, 0, 0, 0)
    while time.perf_counter() < deadline:
        with contextlib.suppress(Exception):
            last = await counts(cli)
            if last[1] >= pods and last[3] >= containers:
                s.add(d.kind, "restart.listed", time.perf_counter() - t0)
                break
        await asyncio.sleep(0.005)
    else:
        s.note(d.kind, f"restart: pods/ready/containers/running {last} after 60 s")
    return cli
