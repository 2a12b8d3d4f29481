"""A kubelet-like steady load on one runtime, with the latency of every call and the
daemon's CPU.

Shape (the periods are kubelet's defaults where it has one):

* 5 pods with 2 running containers each, made before the window opens;
* every 1 s a relist (generic PLEG): ``ListPodSandbox`` + ``ListContainers``, then the
  status of what changed since the last relist (``PodSandboxStatus`` + ``ContainerStatus``
  of each churned pod) and of one steady pod in turn (the periodic pod sync), plus a
  ``Version`` (a trivial unary RPC, timed under load);
* every 2 s an exec probe (``ExecSync true``) on each of the 10 steady containers, spread
  evenly (5 per second);
* 0.5 pod/s churn: every 2 s a new pod with one container (Run + Create + Start), and the
  oldest churn pod removed once 3 are up (StopContainer, RemoveContainer, StopPodSandbox,
  RemovePodSandbox);
* every 10 s ``ListContainerStats`` + ``ListPodSandboxStats`` (cAdvisor-less kubelet);
* every 5 s ``Status`` (kubelet's runtime state check).

Calls are scheduled on absolute ticks, so a slow call delays only its own loop. The daemon's
CPU is ``utime + stime`` of its process over the window (its own threads), as % of one
core; beside it the whole stack's: the cpuacct cgroup of the daemon, everything it spawned
(runtime commands; conmons or shims) and the pods, so that work one runtime does in its
daemon and the other in its monitors is counted alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from benchhost import proc_cpu
from criops import Pods, timed
from daemons import cpuacct_s
from phases import Samples

from cri_async.api.runtime.v1 import api_pb2 as pb

STEADY_PODS = 5
CONTAINERS_PER_POD = 2
RELIST_S = 1.0
PROBE_S = 2.0
CHURN_S = 2.0
CHURN_KEEP = 3
STATS_S = 10.0
STATUS_S = 5.0


async def every(
    period: float, until: float, fn: Callable[[int], Awaitable[None]], phase: float = 0.0
) -> None:
    """Call ``fn(k)`` at ``start + phase + k * period`` until ``until`` (monotonic)."""
    start = time.monotonic() + phase
    k = 0
    while True:
        at = start + k * period
        if at >= until:
            return
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        await fn(k)
        k += 1


async def kubelet_load(
    pods: Pods, s: Samples, rt: str, pid: int, seconds: float, stack_cgroup: str
) -> None:
    """``stack_cgroup``: the cpuacct cgroup holding the daemon, its helpers and the pods."""
    rtc = pods.cli.runtime
    steady = [await pods.up("steady", CONTAINERS_PER_POD) for _ in range(STEADY_PODS)]
    containers = [c for _, cids, _ in steady for c in cids]
    churn: list[tuple[str, list[str]]] = []
    changed: list[tuple[str, list[str]]] = []  # churned since the last relist
    errors: list[str] = []

    async def call(metric: str, aw: Awaitable[object]) -> object | None:
        try:
            r, t = await timed(aw)
        except Exception as e:
            errors.append(f"{metric}: {e!r}"[:300])
            return None
        s.add(rt, f"load.{metric}", t)
        return r

    async def relist(k: int) -> None:
        await call("list_pods", rtc.ListPodSandbox(pb.ListPodSandboxRequest()))
        await call("list_containers", rtc.ListContainers(pb.ListContainersRequest()))
        await call("version", pods.cli.version())
        todo = [*changed, (steady[k % STEADY_PODS][0], steady[k % STEADY_PODS][1])]
        changed.clear()
        for pod, cids in todo:
            await call(
                "pod_status", rtc.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod))
            )
            for cid in cids:
                await call(
                    "container_status",
                    rtc.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)),
                )

    def probe(cid: str) -> Callable[[int], Awaitable[None]]:
        async def run(_: int) -> None:
            r = await call("exec", pods.cli.exec_sync(cid, ["true"], timeout=10))
            if isinstance(r, pb.ExecSyncResponse) and r.exit_code != 0:
                errors.append(f"ExecSync true exited {r.exit_code}")

        return run

    async def churn_tick(_: int) -> None:
        try:
            pod, cids, t = await pods.up("churn")
        except Exception as e:
            errors.append(f"churn up: {e!r}"[:300])
            return
        for k, v in t.items():
            s.add(rt, f"load.churn.{k}", v)
        churn.append((pod, cids))
        changed.append((pod, cids))
        if len(churn) > CHURN_KEEP:
            old = churn.pop(0)
            try:
                for k, v in (await pods.down(*old)).items():
                    s.add(rt, f"load.churn.{k}", v)
            except Exception as e:
                errors.append(f"churn down: {e!r}"[:300])

    async def stats(_: int) -> None:
        await call("container_stats", rtc.ListContainerStats(pb.ListContainerStatsRequest()))
        await call("pod_stats", rtc.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()))

    async def status(_: int) -> None:
        await call("status", rtc.Status(pb.StatusRequest()))

    cpu0, stack0, t0 = proc_cpu(pid), cpuacct_s(stack_cgroup), time.monotonic()
    until = t0 + seconds
    spread = PROBE_S / len(containers)
    loops = [
        every(RELIST_S, until, relist),
        every(CHURN_S, until, churn_tick, 0.5),
        every(STATS_S, until, stats, min(5.0, seconds / 2)),
        every(STATUS_S, until, status, 0.25),
        *(every(PROBE_S, until, probe(c), i * spread) for i, c in enumerate(containers)),
    ]
    await asyncio.gather(*loops)
    cpu1, stack1, wall = proc_cpu(pid), cpuacct_s(stack_cgroup), time.monotonic() - t0
    s.add(rt, "load.cpu", (cpu1 - cpu0).self_s / wall)
    s.add(rt, "load.cpu_stack", (stack1 - stack0) / wall)
    s.add(rt, "load.wall", wall)
    for e in errors[:20]:
        s.note(rt, f"load: {e}")
    if len(errors) > 20:
        s.note(rt, f"load: {len(errors) - 20} more errors")
    for pod, cids in churn + [(p, c) for p, c, _ in steady]:
        with contextlib.suppress(Exception):
            await pods.down(pod, cids)
