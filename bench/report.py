"""The suite's one table (text for the terminal, Markdown for docs/performance.md) and the
issue's figures to reach, computed from the samples of one run.

Each row names a metric and the statistics shown (p50/p95/p99 of the samples, or the median
of few); the ratio is cri-async / containerd of the first statistic (and of the second,
when there are two); "floor" is the raw runtime (runc straight, no daemon) where one exists,
and "x floor" is cri-async over it. Latencies in ms, memory in MB (10^6 bytes), CPU in % of
one core, pulls in s.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchhost import pct
from daemons import CONTAINERD, CRI_ASYNC
from phases import FLOOR, Samples

FAKE = "cri-async (fake)"


@dataclass(frozen=True)
class Row:
    label: str
    metric: str
    stats: tuple[str, ...] = ("p50", "p95")
    scale: float = 1e3  # samples are seconds; shown in ms
    digits: int = 1
    fake: bool = False  # cri-async's column is the fake backend's; no containerd


def stat(xs: Sequence[float], name: str) -> float:
    if not xs:
        return math.nan
    if name == "med":
        return statistics.median(xs)
    if name == "max":
        return max(xs)
    return pct(xs, float(name[1:]))


def rows(
    objects: int, fake_objects: int, pods: int, concurrent: int, small_pulls: bool = False
) -> list[tuple[str, list[Row]]]:
    a, b = ("4 MiB / 4 layers", "1,000") if small_pulls else ("200 MiB / 20 layers", "10,000")
    mem = 1.0
    pct100 = 100.0
    return [
        ("1. unary RPCs and lists, idle (ms)", [
            Row("Version", "version"),
            *(Row(f"ListPodSandbox, {n} pods", f"list_pods@{n}") for n in (0, objects)),
            *(Row(f"ListContainers, {n} containers", f"list_containers@{n}") for n in (0, objects)),
            *(Row(f"fake backend: ListPodSandbox, {n}", f"list_pods@{n}", fake=True)
              for n in sorted({0, min(100, fake_objects), fake_objects})),
            *(Row(f"fake backend: ListContainers, {n}", f"list_containers@{n}", fake=True)
              for n in sorted({0, min(100, fake_objects), fake_objects})),
        ]),
        ("2. pod + container lifecycle, per RPC (ms)", [
            Row("RunPodSandbox", "lifecycle.run_pod"),
            Row("CreateContainer", "lifecycle.create"),
            Row("StartContainer", "lifecycle.start"),
            Row("StopContainer (timeout 0)", "lifecycle.stop"),
            Row("RemoveContainer", "lifecycle.remove"),
            Row("StopPodSandbox", "lifecycle.stop_pod"),
            Row("RemovePodSandbox", "lifecycle.remove_pod"),
            Row("pod: Run + Stop + Remove (floor: pin + CNI ADD/DEL)", "lifecycle.pod"),
            Row("container: Create..Remove (floor: runc)", "lifecycle.container"),
            Row("total (floor: runc create+start+wait+delete)", "lifecycle.total"),
            Row("total (floor: runc + pod network)", "lifecycle.total_net"),
        ]),
        ("3. from scratch, and many at once (ms)", [
            Row("pod + container from scratch (floor: create+start)", "scratch"),
            Row(f"{concurrent} pods at once: wall", "concurrent.up_wall", ("med",), digits=0),
            Row(f"{concurrent} pods at once: per pod", "concurrent.up", ("p50", "p95"), digits=0),
            Row(f"{concurrent} pods removed at once: wall", "concurrent.down_wall", ("med",),
                digits=0),
            Row("daemon CPU per pod, starting them", "cpu_per_pod.up", ("med",)),
        ]),
        ("4. ExecSync, and a kubelet-like load (ms, CPU %)", [
            Row("ExecSync true, idle (floor: runc exec)", "exec.idle", ("p50", "p99")),
            Row("under load: ExecSync true", "load.exec", ("p50", "p99")),
            Row("under load: Version", "load.version", ("p50", "p99")),
            Row("under load: PodSandboxStatus", "load.pod_status", ("p50", "p99")),
            Row("under load: ContainerStatus", "load.container_status", ("p50", "p99")),
            Row("under load: ListPodSandbox", "load.list_pods", ("p50", "p99")),
            Row("under load: ListContainers", "load.list_containers", ("p50", "p99")),
            Row("under load: ListContainerStats", "load.container_stats", ("p50", "max")),
            Row("under load: ListPodSandboxStats", "load.pod_stats", ("p50", "max")),
            Row("under load: churn RunPodSandbox", "load.churn.run_pod", ("p50", "p95")),
            Row("under load: churn CreateContainer", "load.churn.create", ("p50", "p95")),
            Row("daemon CPU under load (% of a core)", "load.cpu", ("med",), pct100),
            Row("whole stack under load: daemon, monitors, runtime, pods", "load.cpu_stack",
                ("med",), pct100),
        ]),
        ("5. cold pull + unpack (s, wall; CPU s; peak RSS MB)", [
            Row(f"a: {a}, wall", "pull.a.wall", ("med", "max"), 1.0, 2),
            Row("a: CPU (daemon + children)", "pull.a.cpu", ("med",), 1.0, 2),
            Row("a: peak RSS", "pull.a.rss", ("med",), 1.0, 0),
            Row(f"b: {b} small files, wall", "pull.b.wall", ("med", "max"), 1.0, 2),
            Row("b: CPU (daemon + children)", "pull.b.cpu", ("med",), 1.0, 2),
            Row("b: peak RSS", "pull.b.rss", ("med",), 1.0, 0),
        ]),
        ("6. memory (MB)", [
            Row("daemon RSS, idle", "mem.idle.rss", ("med",), mem),
            Row("daemon PSS, idle", "mem.idle.pss", ("med",), mem),
            Row(f"daemon RSS, {pods} pods", "mem.pods.rss", ("med",), mem),
            Row(f"daemon PSS, {pods} pods", "mem.pods.pss", ("med",), mem),
            Row("monitors (conmon / shim): how many", "mem.pods.monitors", ("med",), mem, 0),
            Row("monitors: RSS summed", "mem.pods.monitors_rss", ("med",), mem),
            Row("monitors: PSS summed", "mem.pods.monitors_pss", ("med",), mem),
            Row("daemon RSS after the restart", "mem.restarted.rss", ("med",), mem),
            Row("daemon peak RSS (VmHWM) over the run", "mem.peak", ("max",), mem),
        ]),
        (f"7. kill -9 with {pods} pods running (ms)", [
            Row("kill -> Status answers both conditions true", "restart.ready", ("med",), digits=0),
            Row("kill -> every pod and container listed again", "restart.listed", ("med",),
                digits=0),
        ]),
    ]  # fmt: skip


def cells(s: Samples, r: Row) -> tuple[list[float], list[float], list[float]]:
    ours = s.get(FAKE if r.fake else CRI_ASYNC, r.metric)
    theirs = [] if r.fake else s.get(CONTAINERD, r.metric)
    floor = [] if r.fake else s.get(FLOOR, r.metric)

    def vals(xs: list[float]) -> list[float]:
        return [stat(xs, st) * r.scale for st in r.stats] if xs else []

    return vals(ours), vals(theirs), vals(floor)


def _fmt(vals: list[float], digits: int) -> str:
    if not vals:
        return "-"
    return " / ".join("-" if math.isnan(v) else f"{v:.{digits}f}" for v in vals)


def _ratio(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "-"
    out = [
        f"{x / y:.2f}" if y and not math.isnan(x / y) else "-" for x, y in zip(a, b, strict=True)
    ]
    return " / ".join(out)


def table(s: Samples, layout: list[tuple[str, list[Row]]], markdown: bool) -> list[str]:
    head = ["", "stat", "cri-async", "containerd", "ratio", "raw floor", "x floor"]
    lines: list[str] = []
    emit: Callable[[list[str]], None]
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def emit(c: list[str]) -> None:
            lines.append("| " + " | ".join(c) + " |")
    else:
        widths = [52, 9, 17, 17, 13, 15, 13]

        def emit(c: list[str]) -> None:
            lines.append(
                "".join(
                    x.ljust(w) if i == 0 else x.rjust(w)
                    for i, (x, w) in enumerate(zip(c, widths, strict=True))
                )
            )

        emit(head)
    for title, rs in layout:
        if markdown:
            emit([f"**{title}**", "", "", "", "", "", ""])
        else:
            lines.append(f"-- {title}")
        for r in rs:
            ours, theirs, floor = cells(s, r)
            if not (ours or theirs):
                continue
            emit([
                f"{'  ' if not markdown else ''}{r.label}", "/".join(r.stats),
                _fmt(ours, r.digits), _fmt(theirs, r.digits), _ratio(ours, theirs),
                _fmt(floor, r.digits), _ratio(ours, floor),
            ])  # fmt: skip
    return lines


def _v(s: Samples, rt: str, metric: str, st: str) -> float:
    return stat(s.get(rt, metric), st)


def figures(s: Samples) -> list[tuple[str, float, str, float]]:
    """(figure, measured, comparison, target) for each of the issue's figures to reach."""
    c, d, f = CRI_ASYNC, CONTAINERD, FLOOR

    def ratio(metric: str, st: str, other: str = d) -> float:
        return _v(s, c, metric, st) / _v(s, other, metric, st)

    def ms(metric: str, st: str) -> float:
        return _v(s, c, metric, st) * 1e3

    out = [
        ("pod + container lifecycle p50, x containerd", ratio("lifecycle.total", "p50"), "<=", 0.5),
        ("pod + container lifecycle p50, x floor", ratio("lifecycle.total", "p50", f), "<=", 1.5),
        ("  the same, x floor with the pod network", ratio("lifecycle.total_net", "p50", f),
         "<=", 1.5),
        ("ExecSync idle p50, x containerd", ratio("exec.idle", "p50"), "<=", 0.7),
        ("ExecSync idle p99, x containerd", ratio("exec.idle", "p99"), "<=", 0.7),
        ("ExecSync under load p50, x containerd", ratio("load.exec", "p50"), "<=", 0.7),
        ("ExecSync under load p99, x containerd", ratio("load.exec", "p99"), "<=", 0.7),
        ("ListPodSandbox p99 under load, ms", ms("load.list_pods", "p99"), "<=", 3.0),
        ("ListContainers p99 under load, ms", ms("load.list_containers", "p99"), "<=", 3.0),
        ("Version p50 under load, ms", ms("load.version", "p50"), "<=", 1.0),
        ("PodSandboxStatus p50 under load, ms", ms("load.pod_status", "p50"), "<=", 1.0),
        ("ContainerStatus p50 under load, ms", ms("load.container_status", "p50"), "<=", 1.0),
        ("daemon CPU under load, x containerd", ratio("load.cpu", "med"), "<=", 1.0),
        ("whole-stack CPU under load, x containerd", ratio("load.cpu_stack", "med"), "<=", 1.0),
        ("small-file pull wall, x containerd", ratio("pull.b.wall", "med"), "<=", 0.8),
        ("200 MiB pull wall, x containerd", ratio("pull.a.wall", "med"), "<=", 0.8),
        ("N pods at once wall, x floor", ratio("concurrent.up_wall", "med", f), "<=", 1.3),
        ("kill -9 -> ready, s", _v(s, c, "restart.ready", "med"), "<=", 0.5),
        ("daemon RSS idle, MB", _v(s, c, "mem.idle.rss", "med"), "<=", 50.0),
        ("daemon RSS with the pods, MB", _v(s, c, "mem.pods.rss", "med"), "<=", 60.0),
    ]  # fmt: skip
    return out


def figure_lines(s: Samples, markdown: bool) -> list[str]:
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"] if markdown else []
    for name, val, op, target in figures(s):
        met = "-" if math.isnan(val) else ("yes" if val <= target else "no")
        if markdown:
            lines.append(f"| {name} | {val:.2f} | {op} {target:g} | {met} |")
        else:
            lines.append(f"  {name:<52}{val:9.2f}  {op} {target:<6g} {met}")
    return lines
