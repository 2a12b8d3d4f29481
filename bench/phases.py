"""The suite's measurements on one runtime's socket (any CRI runtime), each a function that
adds samples to a ``Samples`` store; the raw-runtime floor runs beside them where one exists.

* ``rpc_basics``: ``Version``, ``ListPodSandbox`` and ``ListContainers`` back to back;
* ``lifecycle``: rounds of one pod's whole life (RunPodSandbox, CreateContainer,
  StartContainer, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox), each
  RPC timed, with a floor round (runc create + start + wait + delete of ``true``) in turn;
* ``scratch``: pod + container from scratch (Run + Create + Start until ``ContainerStatus``
  says RUNNING) beside the floor's create + start of ``sleep``;
* ``concurrent``: N pods (each Run + Create + Start) gathered at once, then removed at once,
  beside N floor containers started and removed at once (a thread each);
* ``exec_idle``: ``ExecSync true`` on an idle container, one after the other.

Every sample is in seconds, under a metric name (``lifecycle.create``, ``list_pods@100``...).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchhost import Floor, floor_batch, proc_cpu
from criops import Pods, sample, timed

from cri_async.api.runtime.v1 import api_pb2 as pb

FLOOR = "floor"
LIFECYCLE_STEPS = ("run_pod", "create", "start", "stop", "remove", "stop_pod", "remove_pod")
POD_STEPS = ("run_pod", "stop_pod", "remove_pod")
CONTAINER_STEPS = ("create", "start", "stop", "remove")
FLOOR_STEPS = ("create", "start", "wait", "delete")


@dataclass
class Samples:
    """metric -> runtime -> samples; also notes (errors, counts) per runtime."""

    data: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, runtime: str, metric: str, values: list[float] | float) -> None:
        vals = values if isinstance(values, list) else [values]
        self.data[metric].setdefault(runtime, []).extend(vals)

    def get(self, runtime: str, metric: str) -> list[float]:
        return self.data.get(metric, {}).get(runtime, [])

    def note(self, runtime: str, text: str) -> None:
        self.notes[runtime].append(text)

    def to_json(self) -> dict[str, Any]:
        return {"samples": {m: dict(v) for m, v in self.data.items()}, "notes": dict(self.notes)}


async def rpc_basics(pods: Pods, s: Samples, rt: str, n: int, objects: int) -> None:
    """Version, ListPodSandbox, ListContainers (``objects`` of each exist), ``n`` calls each."""
    runtime = pods.cli.runtime
    if objects == 0:
        await sample(pods.cli.version, 5)  # warm the connection
        s.add(rt, "version", await sample(pods.cli.version, n))
    s.add(rt, f"list_pods@{objects}", await sample(
        lambda: runtime.ListPodSandbox(pb.ListPodSandboxRequest()), n))  # fmt: skip
    s.add(rt, f"list_containers@{objects}", await sample(
        lambda: runtime.ListContainers(pb.ListContainersRequest()), n))  # fmt: skip


async def lifecycle(
    pods: dict[str, Pods],
    floor: Floor,
    s: Samples,
    rounds: int,
    warmup: int,
    network: Callable[[int], dict[str, float]] | None = None,
) -> None:
    """Pod + container lifecycle rounds, each RPC timed: one round per runtime and one of the
    floor in turn, the order rotating every round, so that drift in the machine's load hits
    every series alike and none always follows the deferred work another leaves.

    ``network(i)``: the pod network's own floor (namespaces pinned, the CNI plugins' ADD and
    DEL run straight, unpinned; seconds per step), run in the floor's round: the floor of
    the pod RPCs, and with runc's that of the whole lifecycle (``lifecycle.total_net``)."""

    async def ours(rt: str, i: int) -> None:
        pod, cids, t = await pods[rt].up("lc")
        t |= await pods[rt].down(pod, cids)
        if i >= warmup:
            for k in LIFECYCLE_STEPS:
                s.add(rt, f"lifecycle.{k}", t[k])
            s.add(rt, "lifecycle.pod", sum(t[k] for k in POD_STEPS))
            s.add(rt, "lifecycle.container", sum(t[k] for k in CONTAINER_STEPS))
            s.add(rt, "lifecycle.total", sum(t[k] for k in LIFECYCLE_STEPS))
            if network is not None:
                s.add(rt, "lifecycle.total_net", sum(t[k] for k in LIFECYCLE_STEPS))

    async def floor_round(i: int) -> None:
        t = await asyncio.to_thread(floor.raw_once, f"lc-{i}")
        net = await asyncio.to_thread(network, i) if network is not None else {}
        if i >= warmup:
            for k in FLOOR_STEPS:
                s.add(FLOOR, f"floor.{k}", t[k])
            s.add(FLOOR, "lifecycle.total", sum(t.values()))
            if network is not None:
                for k, v in net.items():
                    s.add(FLOOR, f"floor.net.{k}", v)
                s.add(FLOOR, "lifecycle.container", sum(t.values()))
                s.add(FLOOR, "lifecycle.pod", sum(net.values()))
                s.add(FLOOR, "lifecycle.total_net", sum(t.values()) + sum(net.values()))

    kinds = [*pods, FLOOR]
    for i in range(warmup + rounds):
        shift = i % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            await (floor_round(i) if kind == FLOOR else ours(kind, i))


async def scratch(pods: Pods, floor: Floor, s: Samples, rt: str, rounds: int) -> None:
    """Pod + container from scratch until RUNNING; beside it the floor's create + start."""
    for i in range(rounds):
        t0 = time.perf_counter()
        pod, cids, _ = await pods.up("scratch")
        for _ in range(10_000):  # polled: the runtime's answer is the condition
            if (await pods.cli.container_status(cids[0])).state == pb.CONTAINER_RUNNING:
                break
        s.add(rt, "scratch", time.perf_counter() - t0)
        await pods.down(pod, cids)
        cid = f"scr-{rt[:3]}-{i}"
        t0 = time.perf_counter()
        pid = await asyncio.to_thread(floor.up, cid)
        s.add(FLOOR, "scratch", time.perf_counter() - t0)
        await asyncio.to_thread(floor.down, cid, pid)


async def concurrent(pods: Pods, floor: Floor, s: Samples, rt: str, n: int, pid: int) -> None:
    """``n`` pods at once (Run + Create + Start each), then all removed at once; the floor's
    ``n`` containers at once before it. The daemon's CPU per pod goes with it."""
    batch = await asyncio.to_thread(floor_batch, floor, n, f"conc-{rt[:3]}")
    s.add(FLOOR, "concurrent.up_wall", batch.up_wall)
    s.add(FLOOR, "concurrent.up", batch.up)
    s.add(FLOOR, "concurrent.down_wall", batch.down_wall)
    for e in batch.errors:
        s.note(FLOOR, e)

    async def up() -> tuple[str, list[str], float]:
        t0 = time.perf_counter()
        pod, cids, _ = await pods.up("conc")
        return pod, cids, time.perf_counter() - t0

    async def down(pod: str, cids: list[str]) -> float:
        t0 = time.perf_counter()
        await pods.down(pod, cids)
        return time.perf_counter() - t0

    cpu0 = proc_cpu(pid)
    t0 = time.perf_counter()
    ups = await asyncio.gather(*(up() for _ in range(n)), return_exceptions=True)
    s.add(rt, "concurrent.up_wall", time.perf_counter() - t0)
    cpu1 = proc_cpu(pid)
    ok = [u for u in ups if not isinstance(u, BaseException)]
    for u in ups:
        if isinstance(u, BaseException):
            s.note(rt, f"concurrent start: {u!r}")
    s.add(rt, "concurrent.up", [u[2] for u in ok])
    t0 = time.perf_counter()
    downs = await asyncio.gather(*(down(p, c) for p, c, _ in ok), return_exceptions=True)
    s.add(rt, "concurrent.down_wall", time.perf_counter() - t0)
    for d in downs:
        if isinstance(d, BaseException):
            s.note(rt, f"concurrent remove: {d!r}")
    cpu2 = proc_cpu(pid)
    s.add(rt, "cpu_per_pod.up", (cpu1 - cpu0).self_s / max(n, 1))
    s.add(rt, "cpu_per_pod.down", (cpu2 - cpu1).self_s / max(n, 1))


async def exec_idle(pods: Pods, floor: Floor, s: Samples, rt: str, n: int) -> None:
    """``ExecSync true`` on an idle container, ``n`` times one after the other; then the
    floor: ``runc exec <id> true`` as often in a container started straight by runc."""
    pod, cids, _ = await pods.up("exec")
    try:
        for _ in range(3):  # warm-up
            await pods.cli.exec_sync(cids[0], ["true"], timeout=10)
        for _ in range(n):
            r, t = await timed(pods.cli.exec_sync(cids[0], ["true"], timeout=10))
            if r.exit_code != 0:
                s.note(rt, f"ExecSync true exited {r.exit_code}: {r.stderr[-200:]!r}")
            s.add(rt, "exec.idle", t)
    finally:
        await pods.down(pod, cids)
    cid = f"exec-{rt[:3]}"
    pid = await asyncio.to_thread(floor.up, cid)
    try:
        for _ in range(n):
            s.add(FLOOR, "exec.idle", await asyncio.to_thread(floor.exec, cid, "true"))
    finally:
        await asyncio.to_thread(floor.down, cid, pid)
