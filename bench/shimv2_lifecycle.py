"""Container lifecycle through containerd-shim-runc-v2 with our shim v2 client.

What it measures, on a busybox rootfs (``/bin/busybox`` from busybox-static, bind-mounted
read-only as the task's rootfs mount, as CRI passes it):

* **per-container shim** (``--iterations``, default 30, after 2 untimed warm-ups): each
  step of one container's life timed on its own: ``shim start`` (fork of the shim daemon,
  ttrpc connect, Connect), Create (the shim mounts the rootfs and runs ``runc create``),
  Start, Wait for ``true`` to exit, Delete, Shutdown (until the shim process is gone), and
  the sum (**total**);
* **pod-grouped shim**: the same containers sharing one shim (the
  ``io.kubernetes.cri.sandbox-id`` annotation): ``shim start`` only joins the running shim,
  and Shutdown returns at once; the first, shim-starting container is not counted;
* **ttrpc round trip**: 500 Connect calls on one connection (the floor every task API call
  pays), and 500 issued concurrently (wall time / 500);
* **exit event lag**: TaskExit's arrival on our events endpoint minus Wait's answer (both
  on our clock; negative: the event came first).

Rerun (from the repository root, as root; containerd, runc and busybox-static from
Debian; about 10 s with the defaults)::

    .venv/bin/python bench/shimv2_lifecycle.py
    .venv/bin/python bench/shimv2_lifecycle.py --iterations 100 --json /tmp/shimv2.json

Everything lives under ``--run-root`` (``/run/crb-shim``) and is removed at the end; any
process, mount or cgroup left is reported and the exit status is then 1. A shared 2-vCPU
VM moves numbers by +-20 %: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchhost import (  # noqa: E402
    cgroup_dirs,
    mounts_under,
    pct,
    processes_mentioning,
    rmdir_cgroup_tree,
)

from cri_async.backends.shimv2 import (  # noqa: E402
    EventServer,
    Mount,
    ShimManager,
    TaskExit,
    resolve_binary,
    runc_options,
)

T = TypeVar("T")
NS = "crb-shim"
CGROUP = "crb-shim"
STEPS = ("start", "create", "task_start", "wait", "delete", "shutdown")


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    value = await aw
    return value, (time.perf_counter() - t0) * 1000


def make_rootfs(dest: Path) -> None:
    (dest / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", dest / "bin/busybox")
    for applet in ("sh", "true", "sleep"):
        (dest / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp"):
        (dest / d).mkdir()


def bundle_config(cid: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {
            "args": ["true"],
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "b",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "annotations": annotations,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/{CGROUP}/{cid}",
        },
    }


class Bench:
    def __init__(self, root: Path, binary: str, manager: ShimManager, events: EventServer):
        self.root = root
        self.binary = binary
        self.manager = manager
        self.events = events
        self.sub = events.subscribe(NS)
        self.n = 0
        self.exit_seen: dict[str, float] = {}

    async def watch_exits(self) -> None:
        async for e in self.sub:
            if isinstance(e.event, TaskExit):
                self.exit_seen[e.event.container_id] = time.perf_counter()

    async def one(self, group: str | None) -> tuple[dict[str, float], float | None]:
        self.n += 1
        cid = f"b{self.n}"
        bundle = self.root / NS / cid
        bundle.mkdir(parents=True)
        ann = {"io.kubernetes.cri.sandbox-id": group} if group else {}
        (bundle / "config.json").write_text(json.dumps(bundle_config(cid, ann)))
        t: dict[str, float] = {}
        shim, t["start"] = await timed(self.manager.start(cid, bundle, self.binary))
        c = shim.client
        _, t["create"] = await timed(
            c.create(
                cid,
                str(bundle),
                rootfs=[Mount("bind", str(self.root / "rootfs"), ("rbind", "ro"))],
                options=runc_options(root=str(self.root / "runc")),
            )
        )
        _, t["task_start"] = await timed(c.start(cid))
        exit_info, t["wait"] = await timed(c.wait(cid))
        waited = time.perf_counter()
        assert exit_info.exit_status == 0, exit_info
        _, t["delete"] = await timed(c.delete(cid))
        _, t["shutdown"] = await timed(shim.shutdown())
        t["total"] = sum(t[s] for s in STEPS)
        shutil.rmtree(bundle)
        await asyncio.sleep(0)
        lag = (self.exit_seen[cid] - waited) * 1000 if cid in self.exit_seen else None
        return t, lag


def dist(xs: Sequence[float]) -> dict[str, float]:
    return {"p50": round(pct(xs, 50), 2), "p95": round(pct(xs, 95), 2)}


def table(title: str, rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {k: dist([r[k] for r in rows]) for k in (*STEPS, "total")}
    print(f"\n{title} ({len(rows)} containers), ms")
    for k, d in out.items():
        print(f"  {k:<11} p50 {d['p50']:8.2f}   p95 {d['p95']:8.2f}")
    return out


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    binary = resolve_binary("io.containerd.runc.v2")
    events = EventServer(str(root / "events.sock"))
    await events.start()
    manager = ShimManager(namespace=NS, events_address=events.path)
    b = Bench(root, binary, manager, events)
    watcher = asyncio.create_task(b.watch_exits())
    results: dict[str, Any] = {"load_avg": os.getloadavg()}
    try:
        for _ in range(args.warmup):
            await b.one(None)
        rows, lags = [], []
        for _ in range(args.iterations):
            t, lag = await b.one(None)
            rows.append(t)
            if lag is not None:
                lags.append(lag)
        results["per_container_shim"] = table("per-container shim", rows)

        # A pod: one long-lived container keeps the shared shim up.
        keeper = root / NS / "keeper"
        keeper.mkdir(parents=True)
        cfg = bundle_config("keeper", {"io.kubernetes.cri.sandbox-id": "pod"})
        cfg["process"]["args"] = ["sleep", "1000"]
        (keeper / "config.json").write_text(json.dumps(cfg))
        kshim = await manager.start("keeper", keeper, binary)
        await kshim.client.create(
            "keeper",
            str(keeper),
            rootfs=[Mount("bind", str(root / "rootfs"), ("rbind", "ro"))],
            options=runc_options(root=str(root / "runc")),
        )
        await kshim.client.start("keeper")
        grouped = [(await b.one("pod"))[0] for _ in range(args.iterations)]
        results["pod_grouped_shim"] = table("pod-grouped shim", grouped)

        conn = kshim.client
        seq = [(await timed(conn.connect("keeper")))[1] for _ in range(500)]
        _, wall = await timed(asyncio.gather(*(conn.connect("keeper") for _ in range(500))))
        results["ttrpc_connect_ms"] = dist(seq) | {"concurrent_per_call": round(wall / 500, 3)}
        print(f"\nttrpc Connect round trip, ms: {results['ttrpc_connect_ms']}")
        results["exit_event_lag_ms"] = dist(lags) if lags else None
        print(f"TaskExit event after Wait's answer, ms: {results['exit_event_lag_ms']}")

        await conn.kill("keeper", signal.SIGKILL)
        await conn.wait("keeper")
        await conn.delete("keeper")
        await kshim.shutdown()
    finally:
        watcher.cancel()
        await manager.close()
        await events.close()
    return results


def cleanup(root: Path) -> dict[str, list[str]]:
    left = {
        "processes": [cmd for _, cmd in processes_mentioning(f"-namespace {NS}")],
        "mounts": mounts_under(root),
        # runc removes a container's cgroup on delete, not the parent we named
        "cgroups": [str(d) for top in cgroup_dirs(CGROUP) for d in top.iterdir() if d.is_dir()],
    }
    left["cgroups"] += rmdir_cgroup_tree(CGROUP)
    shutil.rmtree(root, ignore_errors=True)
    return left


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--run-root", default="/run/crb-shim")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    root = Path(args.run_root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    make_rootfs(root / "rootfs")
    results: dict[str, Any] = {}
    try:
        results = asyncio.run(run(args, root))
    finally:
        left = cleanup(root)
    results["leftovers"] = left
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if any(left.values()):
        print(f"left behind: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
