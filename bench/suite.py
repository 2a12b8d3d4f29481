"""``make bench``: cri-async against containerd's CRI plugin on this machine, one table.

As root. Starts a local registry (``docker-registry``) with locally built images (busybox
and a catatonit pause image from the host's static binaries; the pull images of
``pull.py``), then for each runtime an isolated daemon (``daemons.py``: own root, state,
socket, config, ``hosts.toml`` mirror, the same CNI conflist on its own bridge and /24),
drives it through the same ``CRIClient`` (``phases.py``, ``kubeload.py``,
``memrestart.py``), stops it and removes everything it left; then cold pulls (``pull.py``:
a fresh daemon per pull) and the fake backend's lists. Prints one table (``report.py``)
with cri-async, containerd, the ratio and the raw runc floor, then the issue's figures to
reach; writes every sample, the machine and the versions to a JSON file under
``bench/results/``.

Modes: ``full`` (the numbers to quote; 6-7 min on 2 cores), ``quick`` (fewer rounds, a
shorter load, one pull each; ~3.5 min), ``smoke`` (a few rounds, tiny images; 30-40 s:
proves the harness runs, ``make test`` runs it). This machine may be shared: the load average and
the system's CPU use are recorded before and after; compare within one run.

Ctrl-C (or SIGTERM) stops the run and cleans up all the same: pods, daemons, monitors,
containers, mounts, cgroups, bridges, veths, iptables rules; whatever had to be removed by
force is reported and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import daemons as dm  # noqa: E402
import kubeload  # noqa: E402
import phases  # noqa: E402
import pull  # noqa: E402
import pullimages  # noqa: E402
import report  # noqa: E402
import stats_network  # noqa: E402
from benchhost import (  # noqa: E402
    Floor,
    cgroup_dirs,
    cmd_version,
    host_capabilities,
    mounts_under,
    processes_mentioning,
    rmdir_cgroup_tree,
    unpack_rootfs,
)
from criops import BUSYBOX_REF, Pods, push_images  # noqa: E402
from memrestart import memory, peak_rss, restart  # noqa: E402
from profiling import find_py_spy, profile_summary, py_spy  # noqa: E402

from cri_async import linux  # noqa: E402
from cri_async.client import CRIClient  # noqa: E402
from cri_async.monitor.reaper import become_subreaper  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

FAKE_IMAGE = "docker.io/library/busybox:latest"  # in the fake backend's default catalog
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Mode:
    name: str
    calls: int  # Version / List samples
    rounds: int  # lifecycle rounds (after warmup)
    warmup: int
    scratch: int
    execs: int
    load_s: float
    concurrent: int
    pods: int  # running while memory and restart are measured
    objects: int  # pods (each with a container) when lists are timed
    fake_objects: int
    pull_runs: int
    pull_small: bool


MODES = {
    "smoke": Mode("smoke", 20, 3, 1, 2, 5, 6.0, 4, 3, 5, 50, 1, True),
    "quick": Mode("quick", 100, 20, 2, 5, 30, 20.0, 50, 30, 100, 1000, 1, False),
    "full": Mode("full", 300, 60, 3, 15, 100, 60.0, 50, 30, 100, 1000, 3, False),
}


@dataclass
class Ctx:
    mode: Mode
    tmp: Path
    tag: str
    certs_d: Path
    rootfs: Path
    python: str
    runtimes: list[str]
    py_spy: str | None
    profile_dir: Path | None
    keep_logs: Path | None = None
    s: phases.Samples = field(default_factory=phases.Samples)
    problems: list[str] = field(default_factory=list)

    @property
    def cgroup(self) -> str:
        return f"crbench-{self.tag}"

    @staticmethod
    def letter(kind: str) -> str:
        return {dm.CRI_ASYNC: "a", dm.CONTAINERD: "d"}.get(kind, "f")

    def run_root(self, kind: str) -> Path:
        return Path(f"/run/crb-{self.tag}-{self.letter(kind)}")  # short: conmon's socket paths

    def profile(
        self, ds: dict[str, dm.Daemon], phase: str
    ) -> contextlib.AbstractContextManager[None]:
        """py-spy on cri-async (if it is among ``ds``) while the body runs."""
        d = ds.get(dm.CRI_ASYNC)
        out = self.profile_dir / f"{phase}.txt" if self.profile_dir else None
        binary = self.py_spy if d is not None else None
        return py_spy(binary, d.pid if d else 0, out, idle=False, rate=250)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.asynccontextmanager
async def daemon(ctx: Ctx, kind: str, *, fake: bool = False) -> AsyncIterator[dm.Daemon]:
    """A started, ready daemon; on the way out (error or Ctrl-C too) its pods are removed,
    it is stopped, and whatever it left is reported and removed."""
    wd = ctx.tmp / (f"{kind}-fake" if fake else kind)
    wd.mkdir()
    run_root = ctx.run_root("fake" if fake else kind)
    run_root.mkdir(parents=True)
    net = None
    d = None
    try:
        if not fake:
            [subnet] = dm.free_subnets(1)
            net = dm.Net(f"crb{ctx.tag}{ctx.letter(kind)}", subnet, wd / "cni")
            net.create()
        if kind == dm.CRI_ASYNC:
            extra = {"backend": "fake", "images": "fake"} if fake else {}
            cfg = dm.cri_async_config(wd, run_root, ctx.certs_d, net, **extra)
        else:
            cfg = dm.containerd_config(wd, ctx.certs_d, net)
        d = dm.new_daemon(kind, wd, run_root, cfg, ctx.python, f"{ctx.cgroup}/{kind}/daemon")
        d.spawn()
        await dm.wait_ready(d, network=not fake)
        yield d
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not cut cleanup
        try:
            await stop_daemon(ctx, d, kind, net, [wd, run_root])
            if ctx.keep_logs is not None and d is not None:
                ctx.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(
                    d.log,
                    ctx.keep_logs / d.log.name.replace(".log", f"{'-fake' if fake else ''}.log"),
                )
        finally:
            signal.signal(signal.SIGINT, old)
        with contextlib.suppress(OSError):
            if not mounts_under(run_root):
                shutil.rmtree(run_root)


async def stop_daemon(
    ctx: Ctx, d: dm.Daemon | None, kind: str, net: dm.Net | None, dirs: list[Path]
) -> None:
    if d is not None and d.alive():
        cli = CRIClient(d.socket)
        try:
            async with asyncio.timeout(180):
                await Pods(cli, ctx.cgroup, "").remove_all()
        except Exception as e:
            ctx.problems.append(f"{kind}: removing pods failed: {e!r}")
        finally:
            cli.close()
    if d is not None:
        rc = d.stop()
        if rc not in (0, None):
            ctx.problems.append(f"{kind}: exited {rc} on SIGTERM; log tail:\n{d.logs(15)}")
        ctx.problems += await asyncio.to_thread(dm.sweep, d, f"{ctx.cgroup}/{kind}", dirs)
    if net is not None:
        ctx.problems += net.sweep()


async def run_runtimes(ctx: Ctx) -> None:
    """Both daemons side by side; each phase runs on one runtime, then on the other (the
    lifecycle rounds alternate), so that drift in the machine's load hits both alike."""
    m, s = ctx.mode, ctx.s
    async with contextlib.AsyncExitStack() as stack:
        ds = {k: await stack.enter_async_context(daemon(ctx, k)) for k in ctx.runtimes}
        clis = {
            k: stack.enter_context(contextlib.closing(CRIClient(d.socket))) for k, d in ds.items()
        }
        pods = {
            k: Pods(clis[k], f"{ctx.cgroup}/{k}", str(d.workdir / "logs")) for k, d in ds.items()
        }
        for k, d in ds.items():
            await clis[k].pull(BUSYBOX_REF)
            if k == dm.CONTAINERD:
                await clis[k].pull(dm.PAUSE_REF)  # kubelet's nodes have it; not part of a pod
            memory(d, s, "idle")
            log(f"{k}: ready (pid {d.pid}); Version and lists")
            await phases.rpc_basics(pods[k], s, k, m.calls, 0)
        fl = Floor(
            "runc", shutil.which("runc") or "runc", "conmon", ctx.tmp / "floor" / "root",
            ctx.tmp / "floor" / "b", ctx.rootfs, host_capabilities(), f"{ctx.cgroup}/floor",
        )  # fmt: skip
        network = floor_network(ctx, stack)
        log(f"lifecycle: {m.rounds} rounds of each runtime and the floor, in turn")
        with ctx.profile(ds, "lifecycle"):
            await phases.lifecycle(pods, fl, s, m.rounds, m.warmup, network)
        for k in ds:
            log(f"{k}: from scratch, ExecSync idle")
            await phases.scratch(pods[k], fl, s, k, m.scratch)
            await phases.exec_idle(pods[k], fl, s, k, m.execs)
        for k, d in ds.items():
            log(f"{k}: kubelet-like load, {m.load_s:.0f} s")
            with ctx.profile({k: d}, "load"):
                await kubeload.kubelet_load(pods[k], s, k, d.pid, m.load_s, f"{ctx.cgroup}/{k}")
        for k, d in ds.items():
            log(f"{k}: {m.concurrent} pods at once (+ floor)")
            with ctx.profile({k: d}, "concurrent"):
                await phases.concurrent(pods[k], fl, s, k, m.concurrent, d.pid)
        for k, d in ds.items():
            log(f"{k}: {m.pods} pods, memory, kill -9 and restart")
            await pods[k].many_up("mem", m.pods)
            memory(d, s, "pods")
            peak = peak_rss(d.pid)
            clis[k].close()
            clis[k] = pods[k].cli = stack.enter_context(
                contextlib.closing(await restart(d, s, m.pods, m.pods))
            )
            memory(d, s, "restarted")
            log(f"{k}: growing to {m.objects} pods for the lists")
            await pods[k].many_up("list", m.objects - m.pods)
            await phases.rpc_basics(pods[k], s, k, m.calls, m.objects)
            s.add(k, "mem.peak", max(peak, peak_rss(d.pid)))


def floor_network(ctx: Ctx, stack: contextlib.AsyncExitStack) -> Callable[[int], dict[str, float]]:
    """The pod network's floor: a bridge of its own with the same conflist; per call,
    net/ipc/uts pinned as cri-async pins them, the plugins' ADD and DEL exec'd straight
    (``stats_network.RawCNI``), unpinned. Removed when ``stack`` closes."""
    [subnet] = dm.free_subnets(1)
    net = dm.Net(f"crb{ctx.tag}n", subnet, ctx.tmp / "floornet")
    stack.callback(lambda: ctx.problems.extend(net.sweep()))
    net.create()
    pins = ctx.tmp / "pins"
    stack.callback(linux.umount, str(pins))
    stats_network.make_private_dir(pins)
    raw = stats_network.RawCNI(net.doc, dm.PLUGIN_DIR)
    return lambda i: raw.once(pins, f"lcn{i}", f"lcn-{i}", {}, subnet)


async def run_fake(ctx: Ctx) -> None:
    """Lists of 0, 100 and ``fake_objects`` pods/containers on the fake backend."""
    m, s = ctx.mode, ctx.s
    async with daemon(ctx, dm.CRI_ASYNC, fake=True) as d:
        cli = CRIClient(d.socket)
        try:
            await cli.pull(FAKE_IMAGE)
            pods = Pods(cli, ctx.cgroup + "/fake", "", FAKE_IMAGE, host_network=True)
            have = 0
            for n in sorted({0, min(100, m.fake_objects), m.fake_objects}):
                await pods.many_up("fake", n - have, at_once=16)
                have = n
                await phases.rpc_basics(pods, s, report.FAKE, m.calls, n)
        finally:
            cli.close()


async def run_pulls(ctx: Ctx, reg: LocalRegistry) -> list[Path]:
    """Cold pulls through pull.py: a fresh daemon and store per pull, interleaved."""
    images = pullimages.build_images(None, os.cpu_count() or 2, small=ctx.mode.pull_small)
    for image in images:
        pull.im.push(reg, image.repo, image.built, tag="latest")
    ctrd = shutil.which("containerd") if dm.CONTAINERD in ctx.runtimes else None
    env = pull.Env(ctx.python, ctrd, ctx.tmp, None)
    try:
        for n in range(ctx.mode.pull_runs):
            for image in images:
                for rt in ctx.runtimes:
                    x = await pull.measure(env, rt, image, reg, n)
                    ctx.s.add(rt, f"pull.{image.key}.wall", x.wall_s)
                    ctx.s.add(rt, f"pull.{image.key}.cpu", x.cpu_s)
                    ctx.s.add(rt, f"pull.{image.key}.rss", x.rss_peak_mib * 1.048576)
                    log(f"pull {image.name} {rt}: {x.wall_s:.2f} s")
    finally:
        for w in env.workdirs:  # deleted only now: see pull.py on ext4's freed inodes
            pull.remove_tree(w)
    return env.workdirs


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def machine() -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")), "?")  # fmt: skip
    git = ["git", "-C", str(ROOT)]
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "cri-async": cmd_version([*git, "describe", "--always", "--dirty"]),
        "containerd": cmd_version(["containerd", "--version"]),
        "runc": cmd_version(["runc", "--version"]),
        "conmon": cmd_version(["conmon", "--version"]),
        "docker-registry": cmd_version(["docker-registry", "--version"]),
        "loadavg_start": Path("/proc/loadavg").read_text().strip(),
    }


def final_check(ctx: Ctx) -> list[str]:
    """Anything of this run still on the host (after every daemon's own sweep)."""
    out = []
    for needle in (f"crbench-{ctx.tag}", f"/run/crb-{ctx.tag}-"):
        for pid, cmd in processes_mentioning(needle):
            out.append(f"process left: {pid} {cmd[:150]}")
    links = dm.sh("ip", "-o", "link", check=False)
    out += [
        f"link left: {ln.split(':')[1].strip()}"
        for ln in links.splitlines()
        if f"crb{ctx.tag}" in ln
    ]
    if procs := dm.cgroup_pids(ctx.cgroup):
        out.append(f"processes left in /{ctx.cgroup}: {sorted(procs)}")
        dm.kill_all(procs)
    for root in dm.runc_roots(ctx.tmp / "floor"):
        for cid in dm.sh("runc", f"--root={root}", "list", "-q", check=False).split():
            out.append(f"floor container left: {cid}")
            dm.sh("runc", f"--root={root}", "delete", "--force", cid, check=False)
    out += [f"mount left: {mp}" for mp in mounts_under(ctx.tmp)]
    if cgroup_dirs(ctx.cgroup):
        left = rmdir_cgroup_tree(ctx.cgroup)
        out += [f"cgroup left: {x}" for x in left]
    return out


def print_report(ctx: Ctx, info: dict[str, Any]) -> list[str]:
    m = ctx.mode
    layout = report.rows(m.objects, m.fake_objects, m.pods, m.concurrent, m.pull_small)
    print()
    print("\n".join(report.table(ctx.s, layout, markdown=False)))
    print("\nfigures to reach (issue 12):")
    print("\n".join(report.figure_lines(ctx.s, markdown=False)))
    print(f"\nload average before: {info['loadavg_start']}; after: {info['loadavg_end']}")
    print(f"machine CPU busy during the run: {info['cpu_busy_pct']:.0f} % (all cores)")
    md = [
        f"{info['date']}, mode {m.name}, {info['nproc']} x {info['cpu']}, kernel {info['kernel']}",
        f"load average before {info['loadavg_start']}, after {info['loadavg_end']}; "
        f"machine CPU busy {info['cpu_busy_pct']:.0f} % (all cores, this run included)",
        "",
        *report.table(ctx.s, layout, markdown=True),
        "",
        *report.figure_lines(ctx.s, markdown=True),
    ]
    return md


async def reaper() -> None:
    while True:
        dm.reap_orphans()
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> int:
    mode = MODES[args.mode]
    info = machine()
    busy0 = cpu_busy()
    tag = secrets.token_hex(2)
    tmp = Path(tempfile.mkdtemp(prefix=f"crbench-{tag}-", dir=args.tmp))
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    ctx = Ctx(mode, tmp, tag, tmp / "certs.d", tmp / "rootfs", sys.executable,
              args.runtimes, find_py_spy(args.py_spy_bin) if args.py_spy else None,
              args.py_spy, args.keep_logs)  # fmt: skip
    if args.py_spy and ctx.py_spy is None:
        raise SystemExit("--py-spy: py-spy not found (pip install py-spy, or --py-spy-bin)")
    log(f"mode {mode.name}; temp {tmp}; tag {tag}; load average {info['loadavg_start']}")
    become_subreaper()  # shims and the floor's containers are re-parented to us and reaped
    reaping = asyncio.create_task(reaper())
    t0 = time.monotonic()
    failed: BaseException | None = None
    try:
        with LocalRegistry() as reg:
            busybox = push_images(reg)
            dm.write_hosts(ctx.certs_d, reg.host)
            await asyncio.to_thread(unpack_rootfs, busybox, ctx.rootfs)
            shims_before = dm.shim_sockets()
            try:
                await run_runtimes(ctx)
                if not args.no_fake:
                    log("fake backend: lists")
                    await run_fake(ctx)
                if not args.no_pull:
                    log("cold pulls")
                    await run_pulls(ctx, reg)
            finally:
                dm.remove_dead_shim_sockets(shims_before)
    except BaseException as e:  # still report what was measured, and clean up
        failed = e
    finally:
        reaping.cancel()
        ctx.problems += final_check(ctx)
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = Path("/proc/loadavg").read_text().strip()  # noqa: ASYNC240
    busy1 = cpu_busy()
    info["cpu_busy_pct"] = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    info["wall_s"] = time.monotonic() - t0
    md = print_report(ctx, info)
    for rt, notes in ctx.s.notes.items():
        for n in notes:
            print(f"note ({rt}): {n}")
    for p in ctx.problems:
        print(f"LEFT BEHIND (removed): {p}")
    out = args.json or RESULTS / f"{info['date'][:19].replace(':', '')}-{mode.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "mode": asdict(mode), "runtimes": args.runtimes,
           "problems": ctx.problems, "failed": repr(failed) if failed else None,
           **ctx.s.to_json(), "markdown": md}  # fmt: skip
    out.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {out} ({info['wall_s']:.0f} s)")
    if args.py_spy:
        for f in sorted(args.py_spy.glob("*.txt")):
            print(f"\n== py-spy {f} ==\n" + "\n".join(profile_summary(f)))
    if isinstance(failed, KeyboardInterrupt | asyncio.CancelledError):
        log("interrupted; cleaned up")
        return 130
    if failed is not None:
        raise failed
    return 1 if ctx.problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--mode", choices=sorted(MODES), default="full")
    p.add_argument("--runtimes", default=",".join(dm.RUNTIMES), help="cri-async,containerd")
    p.add_argument(
        "--json", type=Path, help="results file (default: bench/results/<date>-<mode>.json)"
    )
    p.add_argument("--tmp", type=Path, default=Path("/var/tmp"), help="state dirs go here")
    p.add_argument("--no-fake", action="store_true", help="skip the fake backend's lists")
    p.add_argument("--no-pull", action="store_true", help="skip the cold pulls")
    p.add_argument("--py-spy", type=Path, metavar="DIR", help="profile cri-async per phase")
    p.add_argument("--py-spy-bin", help="the py-spy binary (default: on PATH or in this venv)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the daemons' logs here")
    a = p.parse_args(argv)
    a.runtimes = [r for r in a.runtimes.split(",") if r]
    if bad := [r for r in a.runtimes if r not in dm.RUNTIMES]:
        p.error(f"unknown runtime(s) {bad}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: real containers need mounts, namespaces and cgroups")
    missing = [
        b for b in ("runc", "conmon", "docker-registry", "ip", "iptables") if not shutil.which(b)
    ]
    if dm.CONTAINERD in args.runtimes and not shutil.which("containerd"):
        missing.append("containerd")
    if missing:
        raise SystemExit(f"missing: {missing} (make test-deps installs them)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
