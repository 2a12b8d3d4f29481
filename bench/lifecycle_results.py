"""What ``lifecycle.py`` records per backend (``BackendResult``), its summary, the printed
tables and the JSON document, and the versions of everything involved."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchhost import cmd_version, pct

ROOT = Path(__file__).resolve().parent.parent
STEPS = (
    ("run_pod", "RunPodSandbox"),
    ("create", "CreateContainer"),
    ("start", "StartContainer"),
    ("stop", "StopContainer (t=0)"),
    ("remove", "RemoveContainer"),
    ("stop_pod", "StopPodSandbox"),
    ("remove_pod", "RemovePodSandbox"),
)
FLOOR_STEPS = ("create", "start", "wait", "delete")


# -- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """p50/p95/min/max of one series, in ms."""

    n: int
    p50: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Dist:
        ms = [x * 1e3 for x in seconds]
        if not ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(len(ms), pct(ms, 50), pct(ms, 95), min(ms), max(ms))


# -- processes and host state ------------------------------------------------------------------


def versions(python: str) -> dict[str, str]:
    try:
        ours = importlib.metadata.version("cri-async")
    except importlib.metadata.PackageNotFoundError:
        ours = "?"
    commit = cmd_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    git_status = ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]
    try:
        changed = subprocess.run(git_status, capture_output=True, text=True, timeout=10).stdout
        tree = f"{len(changed.splitlines())} tracked files modified" if changed else "clean"
    except (OSError, subprocess.TimeoutExpired):
        tree = "?"
    # What the server will import (PYTHONPATH is passed on: e.g. an exported commit).
    where = "import cri_async; print(cri_async.__file__)"
    source = subprocess.run(
        [python, "-c", where], capture_output=True, text=True, cwd="/", timeout=30
    ).stdout.strip()
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cri-async": f"{ours} (git {commit}, working tree {tree})",
        "server": f"imports {source or '?'}",
        "python": f"{cmd_version([python, '--version'])} ({python})",
        "runc": cmd_version(["runc", "--version"]),
        "crun": cmd_version(["crun", "--version"]),
        "conmon": cmd_version(["conmon", "--version"]),
        "kernel": platform.release(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


@dataclass
class BackendResult:
    backend: str
    iterations: int
    steps: dict[str, list[float]] = field(default_factory=dict)
    floor: dict[str, list[float]] = field(default_factory=dict)
    conmon_floor: dict[str, list[float]] = field(default_factory=dict)
    concurrent: int = 0
    up_wall: float = math.nan
    up_per_pod: list[float] = field(default_factory=list)
    down_wall: float = math.nan
    down_per_pod: list[float] = field(default_factory=list)
    floor_up_wall: float = math.nan
    floor_up: list[float] = field(default_factory=list)
    floor_down_wall: float = math.nan
    floor_down: list[float] = field(default_factory=list)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    version_rpc: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def floor_total(self, conmon: bool = False) -> list[float]:
        f = self.conmon_floor if conmon else self.floor
        if not f:
            return []
        return [sum(v) for v in zip(*(f[s] for s in FLOOR_STEPS), strict=True)]

    def summary(self) -> dict[str, Any]:
        total = Dist.of(self.steps.get("total", []))
        floor = Dist.of(self.floor_total())
        cfloor = Dist.of(self.floor_total(conmon=True))
        return {
            "steps": {k: vars(Dist.of(self.steps.get(k, []))) for k, _ in STEPS},
            "total": vars(total),
            "floor": vars(floor),
            "floor_steps": {k: vars(Dist.of(self.floor.get(k, []))) for k in FLOOR_STEPS},
            "conmon_floor": vars(cfloor),
            "conmon_floor_steps": {
                k: vars(Dist.of(self.conmon_floor.get(k, []))) for k in FLOOR_STEPS
            },
            "overhead_ms": {"p50": total.p50 - floor.p50, "p95": total.p95 - floor.p95},
            "overhead_over_conmon_floor_ms": {
                "p50": total.p50 - cfloor.p50,
                "p95": total.p95 - cfloor.p95,
            },
            "concurrent": {
                "pods": self.concurrent,
                "up_wall_ms": self.up_wall * 1e3,
                "up_per_pod": vars(Dist.of(self.up_per_pod)),
                "down_wall_ms": self.down_wall * 1e3,
                "down_per_pod": vars(Dist.of(self.down_per_pod)),
                "floor_up_wall_ms": self.floor_up_wall * 1e3,
                "floor_up_per_container": vars(Dist.of(self.floor_up)),
                "floor_down_wall_ms": self.floor_down_wall * 1e3,
                "floor_down_per_container": vars(Dist.of(self.floor_down)),
            },
            "server_cpu_ms_per_pod": self.cpu,
            "version_rpc": vars(Dist.of(self.version_rpc)),
        }


# -- report -----------------------------------------------------------------------------------


def fmt(d: Dist) -> str:
    return f"{d.p50:8.1f} {d.p95:8.1f} {d.min:8.1f} {d.max:8.1f}"


def print_backend(res: BackendResult, conmon_floor: bool) -> None:
    print(f"\n== {res.backend}: {res.iterations} sequential rounds (ms) ==")
    print(f"{'':34}{'p50':>8} {'p95':>8} {'min':>8} {'max':>8}")
    for k, label in STEPS:
        print(f"  {label:32}{fmt(Dist.of(res.steps.get(k, [])))}")
    total = Dist.of(res.steps.get("total", []))
    print(f"  {'total':32}{fmt(total)}")
    floor = Dist.of(res.floor_total())
    print(f"  {'floor: ' + res.backend + ' create..delete':32}{fmt(floor)}")
    print("    " + "  ".join(f"{k} {Dist.of(res.floor.get(k, [])).p50:.1f}" for k in FLOOR_STEPS))
    if conmon_floor:
        cf = Dist.of(res.floor_total(conmon=True))
        print(f"  {'floor via conmon':32}{fmt(cf)}")
        print(
            "    "
            + "  ".join(f"{k} {Dist.of(res.conmon_floor.get(k, [])).p50:.1f}" for k in FLOOR_STEPS)
        )
    over = f"{total.p50 - floor.p50:8.1f} {total.p95 - floor.p95:8.1f}"
    print(f"  {'overhead = total - floor':32}{over}")
    print(f"  {'Version RPC (gRPC round trip)':32}{fmt(Dist.of(res.version_rpc))}")
    if res.concurrent:
        up, down = Dist.of(res.up_per_pod), Dist.of(res.down_per_pod)
        print(
            f"  concurrent {res.concurrent} pods up:   wall {res.up_wall * 1e3:7.0f}   "
            f"per pod p50 {up.p50:7.1f} p95 {up.p95:7.1f}  (n={up.n})"
        )
        print(
            f"  concurrent {res.concurrent} pods down: wall {res.down_wall * 1e3:7.0f}   "
            f"per pod p50 {down.p50:7.1f} p95 {down.p95:7.1f}  (n={down.n})"
        )
        fup, fdown = Dist.of(res.floor_up), Dist.of(res.floor_down)
        print(
            f"  floor, {res.concurrent} containers up:   wall {res.floor_up_wall * 1e3:7.0f}   "
            f"per ctr p50 {fup.p50:7.1f} p95 {fup.p95:7.1f}  (create+start, n={fup.n})"
        )
        print(
            f"  floor, {res.concurrent} containers down: wall {res.floor_down_wall * 1e3:7.0f}   "
            f"per ctr p50 {fdown.p50:7.1f} p95 {fdown.p95:7.1f}  (kill+wait+delete)"
        )
    for phase, c in res.cpu.items():
        extra = ", ".join(f"{k} {v:.1f}" for k, v in c.items())
        print(f"  server CPU per pod, {phase}: {extra} ms")
    for e in res.errors:
        print(f"  ! {e}")


def print_summary(results: Sequence[BackendResult]) -> None:
    if not results:
        return
    print("\n== summary (ms, p50 / p95) ==")
    head = f"{'':36}" + "".join(f"{r.backend:>20}" for r in results)
    print(head)
    print("-" * len(head))

    def row(label: str, cells: Sequence[str]) -> None:
        print(f"{label:36}" + "".join(f"{c:>20}" for c in cells))

    def pp(d: Dist) -> str:
        return f"{d.p50:.1f} / {d.p95:.1f}"

    for k, label in STEPS:
        row(label, [pp(Dist.of(r.steps.get(k, []))) for r in results])
    row("total", [pp(Dist.of(r.steps.get("total", []))) for r in results])
    row("floor (runtime create..delete)", [pp(Dist.of(r.floor_total())) for r in results])
    if any(r.conmon_floor for r in results):
        row("floor via conmon", [pp(Dist.of(r.floor_total(conmon=True))) for r in results])
    cells = []
    for r in results:
        t, f = Dist.of(r.steps.get("total", [])), Dist.of(r.floor_total())
        cells.append(f"{t.p50 - f.p50:.1f} / {t.p95 - f.p95:.1f}")
    row("overhead = total - floor", cells)
    cells = []
    for r in results:
        t, f = Dist.of(r.steps.get("total", [])), Dist.of(r.floor_total())
        cells.append(f"{t.p50 / f.p50:.1f}x / {t.p95 / f.p95:.1f}x")
    row("total / floor", cells)
    row("Version RPC (gRPC round trip)", [pp(Dist.of(r.version_rpc)) for r in results])
    if not any(r.concurrent for r in results):
        return
    row(
        f"concurrent {results[0].concurrent} up: wall",
        [f"{r.up_wall * 1e3:.0f}" for r in results],
    )
    row("  per pod", [pp(Dist.of(r.up_per_pod)) for r in results])
    row("  floor: wall", [f"{r.floor_up_wall * 1e3:.0f}" for r in results])
    row("  floor: per container", [pp(Dist.of(r.floor_up)) for r in results])
    row("concurrent down: wall", [f"{r.down_wall * 1e3:.0f}" for r in results])
    row("  per pod", [pp(Dist.of(r.down_per_pod)) for r in results])
    row("  floor: wall", [f"{r.floor_down_wall * 1e3:.0f}" for r in results])
    row("  floor: per container", [pp(Dist.of(r.floor_down)) for r in results])


def to_json(res: BackendResult) -> dict[str, Any]:
    return {
        "backend": res.backend,
        "iterations": res.iterations,
        "summary": res.summary(),
        "samples_s": {
            "steps": res.steps,
            "floor": res.floor,
            "conmon_floor": res.conmon_floor,
            "concurrent_up_per_pod": res.up_per_pod,
            "concurrent_down_per_pod": res.down_per_pod,
            "concurrent_up_wall": res.up_wall,
            "concurrent_down_wall": res.down_wall,
            "concurrent_floor_up_per_container": res.floor_up,
            "concurrent_floor_down_per_container": res.floor_down,
            "concurrent_floor_up_wall": res.floor_up_wall,
            "concurrent_floor_down_wall": res.floor_down_wall,
            "version_rpc": res.version_rpc,
        },
        "errors": res.errors,
    }
