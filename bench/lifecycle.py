"""Pod and container lifecycle latency on real runtimes, beside the raw OCI-runtime floor.

What it measures. A busybox image is built in memory and pushed to a local CNCF registry
(``tests/support/registry.py``). Then, per backend (``runc``, ``crun``, both under conmon;
``shimv2``, containerd-shim-runc-v2 running runc, whose floors are runc's):

* a ``cri-async serve`` **process** is started with that backend as the default handler, so
  every figure includes the real unix socket, gRPC and protobuf (client: ``CRIClient``, one
  HTTP/2 connection, as kubelet has); the image is pulled, and 200 ``Version`` calls give
  the bare gRPC round trip that each of the 7 lifecycle RPCs pays at least;
* **sequential**: ``--iterations`` (50) rounds, after ``--warmup`` (2) untimed ones, of one
  pod's whole life, each RPC timed on its own from the client: RunPodSandbox, CreateContainer
  (``sleep 1000``), StartContainer, StopContainer, RemoveContainer, StopPodSandbox,
  RemovePodSandbox, and their sum (**total**). StopContainer is sent with ``timeout=0``, i.e.
  **SIGKILL at once**: ``sleep`` as pid 1 ignores SIGTERM, so any grace period would only
  measure the timeout. It returns once conmon has recorded the exit;
* **floor**, in the same rounds: the same busybox image, unpacked by this script into a shared
  read-only tree, run straight through the runtime binary: ``create`` (stdio to /dev/null and
  a file, never a pipe:) + ``start`` + wait for the exit (pidfd, then reaped:
  this script is a child subreaper, as cri-async is) + ``delete``, process ``true``. The
  bundle has what a cri-async container gets, less its pod files: new pid/ipc/uts/mount/
  network namespaces, the default mounts, masked and read-only paths, the 14 default
  capabilities that the host's bounding set has, ``cgroupsPath``
  ``/crb-floor/<id>``. **overhead = total - floor** (p50 - p50, p95 - p95) is the figure to
  drive down;
* **conmon floor** (same rounds; ``--no-conmon-floor`` skips it): the same bundle through
  conmon, as cri-async runs it: conmon create (sync/start pipes, ``{"pid": N}``) -> runtime
  ``start`` -> the exit file appears -> runtime ``delete``;
* each round runs the three in turn, starting one further along each time, so that none of
  them always follows the deferred work another leaves behind (exiting conmons, the kernel
  tearing down a network namespace);
* **concurrent**: ``--concurrent`` (50) pods started at once (RunPodSandbox + CreateContainer
  + StartContainer per pod, all gathered): wall time, per-pod p50/p95; then all removed at
  once (StopContainer timeout 0, RemoveContainer, StopPodSandbox, RemovePodSandbox per pod),
  also timed;
* the server's CPU (``utime+stime`` from /proc; "children": the runtime commands and conmons
  it has reaped) per pod in each phase: a diagnostic, in the JSON too.

Rerun (from the repository root, as root; runc, crun and conmon from Debian; about 30-40 s
with the defaults)::

    .venv/bin/python bench/lifecycle.py
    .venv/bin/python bench/lifecycle.py --backends crun --iterations 200 --json /tmp/lc.json
    # the server from a given commit rather than the working tree (PYTHONPATH is passed on):
    mkdir /tmp/src && git archive HEAD cri_async | tar -x -C /tmp/src
    PYTHONPATH=/tmp/src .venv/bin/python bench/lifecycle.py
    # where does the server's CPU go: py-spy (from PyPI, in its own venv) records the server
    # in each phase as collapsed stacks, and the hottest functions are printed
    python3 -m venv /tmp/pyspy-venv && /tmp/pyspy-venv/bin/pip install py-spy
    .venv/bin/python bench/lifecycle.py --py-spy /tmp/lc-prof \\
        --py-spy-bin /tmp/pyspy-venv/bin/py-spy

Layout: state (database, image snapshots, writable layers) under a temp dir (``--tmp``);
``--run-root`` (``/run/crb``: keep it short, conmon's attach socket paths must fit 108
bytes) holds the server's socket, bundles and namespace pins and the floor's bundles and
runtime roots. Everything is removed at the end: pods first, then the server (SIGTERM), then
any process, mount or cgroup left (each one reported, and the exit status is then 1).

Caveats:

* the server logs at ``--log-level`` (``info``, its default) to a file; ``sync = "normal"``
  (SQLite survives a crash of cri-async, not a power loss);
* a cri-async container also gets bind mounts of its pod's resolv.conf/hosts/hostname/shm,
  an overlay rootfs and a log file, and joins the pod's pinned namespaces; that is part of
  the overhead on purpose, as is everything RunPodSandbox does. The floor creates a new
  network namespace per container, which cri-async does once per pod (in RunPodSandbox);
* ``--py-spy`` samples at 250 Hz with ``--nonblocking`` (no ptrace stops; the sampler still
  uses CPU of its own). Without ``--py-spy-idle`` it keeps only samples it thinks are on
  CPU; idle worker threads and ``epoll`` waits still show up in part;
* a shared 2-vCPU VM moves numbers by +-20 % and more under other load (the load average is
  printed at the start and the end): compare within one run, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchhost import (  # noqa: E402
    CPU,
    FLOOR_CGROUP,
    Floor,
    cgroup_dirs,
    floor_batch,
    host_capabilities,
    mounts_under,
    pdeathsig,
    proc_cpu,
    processes_mentioning,
    reap,
    rmdir_cgroup_tree,
    unpack_rootfs,
)
from lifecycle_results import (  # noqa: E402
    STEPS,
    BackendResult,
    print_backend,
    print_summary,
    to_json,
    versions,
)
from profiling import profile_summary, py_spy  # noqa: E402

from cri_async.api.runtime.v1 import api_pb2 as pb  # noqa: E402
from cri_async.client import CRIClient, container_config, pod_config  # noqa: E402
from cri_async.monitor.reaper import become_subreaper  # noqa: E402
from tests.support import images as im  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

T = TypeVar("T")

BACKENDS = ("runc", "crun", "shimv2")
# The OCI runtime under each backend (the floor runs it directly).
FLOOR_RUNTIME = {"runc": "runc", "crun": "crun", "shimv2": "runc"}
SHIM_TOML = 'runtime_type = "io.containerd.runc.v2"\n'
CGROUP_ROOT = Path("/sys/fs/cgroup")
SERVER_CGROUP = "cri-async"  # cri_async.pods.host.DEFAULT_CGROUP_PARENT
IMAGE_REPO = "bench/busybox"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
RPC_TIMEOUT = 60.0
PHASE_TIMEOUT = 600.0
SETTLE = 2.0  # seconds of quiet before each concurrent batch
VERSION_CALLS = 200  # the gRPC round trip alone: what each of the 7 RPCs pays at least


# -- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    backend: str
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    state: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self, tail: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self) -> int | None:
        """SIGTERM (in-flight RPCs finish, state is flushed), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.backend} server ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    backend: str, workdir: Path, run_root: Path, python: str, log_level: str, module: str
) -> Server:
    sock = run_root / "cri.sock"
    state = workdir / "state"
    cfg = workdir / "config.toml"
    cfg.write_text(
        f'[server]\nsocket = "{sock}"\n'
        f'[log]\nlevel = "{log_level}"\n'
        f'[state]\nroot = "{state}"\nrun_root = "{run_root}"\nsync = "normal"\n'
        '[images]\nbackend = "registry"\n'
        f'[runtimes.""]\nbackend = "{backend}"\n' + (SHIM_TOML if backend == "shimv2" else "")
    )
    log = workdir / "server.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [python, "-m", module, "serve", "--config", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=pdeathsig(),
        )
    return Server(backend, proc, sock, log, state)


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.logs()}")
        if server.socket.exists():
            client = CRIClient(server.socket)
            try:
                await asyncio.wait_for(client.version(), 2)
                return
            except Exception as e:  # not serving yet
                last = e
            finally:
                client.close()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server not ready after {START_TIMEOUT}s ({last!r}):\n{server.logs()}")


# -- the lifecycle ----------------------------------------------------------------------------


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    async with asyncio.timeout(RPC_TIMEOUT):
        r = await aw
    return r, time.perf_counter() - t0


class Lifecycle:
    """One pod with one ``sleep`` container, driven through the CRI as kubelet would."""

    def __init__(self, cli: CRIClient, image: str, logs: Path, seen: set[str]) -> None:
        self.cli = cli
        self.image = image
        self.logs = logs
        self.seen = seen  # every sandbox id ever created (for the cgroup check)

    async def up(self, name: str) -> tuple[str, str, dict[str, float]]:
        pcfg = pod_config(name, log_directory=str(self.logs / name))
        ccfg = container_config("c", self.image, command=["sleep", "1000"], log_path="c/0.log")
        pod, t_run = await timed(self.cli.run_pod(pcfg))
        self.seen.add(pod)
        cid, t_create = await timed(self.cli.create_container(pod, ccfg, pcfg))
        _, t_start = await timed(self.cli.start_container(cid))
        return pod, cid, {"run_pod": t_run, "create": t_create, "start": t_start}

    async def down(self, pod: str, cid: str) -> dict[str, float]:
        rt = self.cli.runtime
        _, t_stop = await timed(
            rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        )
        _, t_rm = await timed(rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid)))
        _, t_stopp = await timed(rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod)))
        _, t_rmp = await timed(rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod)))
        return {"stop": t_stop, "remove": t_rm, "stop_pod": t_stopp, "remove_pod": t_rmp}

    async def once(self, name: str) -> dict[str, float]:
        pod, cid, t = await self.up(name)
        t |= await self.down(pod, cid)
        t["total"] = sum(t[k] for k, _ in STEPS)
        return t

    async def remove_everything(self) -> int:
        """Remove every pod the server knows (and so their containers)."""
        rt = self.cli.runtime
        pods = (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items
        for p in pods:
            with contextlib.suppress(Exception):
                await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p.id))
            await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id))
        return len(pods)


@dataclass
class Options:
    iterations: int
    warmup: int
    concurrent: int
    conmon_floor: bool
    run_root: Path
    tmp: Path
    python: str
    log_level: str
    server_module: str
    keep_logs: Path | None
    py_spy: str | None
    profile_dir: Path | None
    profile_idle: bool
    profile_rate: int


def cpu_per_pod(before: CPU, after: CPU, pods: int) -> dict[str, float]:
    d = after - before
    return {"self": d.self_s * 1e3 / pods, "children": d.children_s * 1e3 / pods}


async def sequential(
    opts: Options, server: Server, lc: Lifecycle, floor: Floor, res: BackendResult
) -> None:
    """Rounds of one lifecycle through cri-async and one of each floor; the order rotates
    every round, so that no series always follows the deferred work (exiting conmons, the
    kernel's netns teardown) that another leaves behind."""
    kinds = ["cri-async", "raw", *(["conmon"] if opts.conmon_floor else [])]
    series = {"raw": res.floor, "conmon": res.conmon_floor}

    async def one(kind: str, name: str) -> dict[str, float]:
        if kind == "cri-async":
            return await lc.once(name)
        cid = f"{kind}-{res.backend}-{name}"
        return floor.raw_once(cid) if kind == "raw" else floor.conmon_once(cid)

    for i in range(opts.warmup):
        for kind in kinds:
            await one(kind, f"warm-{i}")
    out = opts.profile_dir / f"{res.backend}-sequential.txt" if opts.profile_dir else None
    with py_spy(opts.py_spy, server.pid, out, idle=opts.profile_idle, rate=opts.profile_rate):
        before = proc_cpu(server.pid)
        for i in range(opts.iterations):
            shift = i % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                t = await one(kind, f"seq-{i}")
                target = res.steps if kind == "cri-async" else series[kind]
                for k, v in t.items():
                    target.setdefault(k, []).append(v)
        res.cpu["sequential"] = cpu_per_pod(before, proc_cpu(server.pid), opts.iterations)


async def concurrent_phase(
    opts: Options, server: Server, lc: Lifecycle, floor: Floor, res: BackendResult
) -> None:
    n = opts.concurrent
    res.concurrent = n
    # Each batch leaves deferred work behind (n network namespaces torn down by the kernel,
    # exiting conmons): let it settle before the next one.
    await asyncio.sleep(SETTLE)
    batch = await asyncio.to_thread(floor_batch, floor, n)
    res.floor_up_wall, res.floor_up = batch.up_wall, batch.up
    res.floor_down_wall, res.floor_down = batch.down_wall, batch.down
    res.errors += [f"concurrent {e}" for e in batch.errors]
    await asyncio.sleep(SETTLE)
    out = opts.profile_dir / f"{res.backend}-concurrent.txt" if opts.profile_dir else None
    with py_spy(opts.py_spy, server.pid, out, idle=opts.profile_idle, rate=opts.profile_rate):
        before = proc_cpu(server.pid)

        async def up(i: int) -> tuple[str, str, float]:
            t0 = time.perf_counter()
            pod, cid, _ = await lc.up(f"conc-{i}")
            return pod, cid, time.perf_counter() - t0

        t0 = time.perf_counter()
        ups = await asyncio.gather(*(up(i) for i in range(n)), return_exceptions=True)
        res.up_wall = time.perf_counter() - t0
        mid = proc_cpu(server.pid)
        started = [u for u in ups if not isinstance(u, BaseException)]
        res.errors += [f"concurrent start: {u!r}" for u in ups if isinstance(u, BaseException)]
        res.up_per_pod = [u[2] for u in started]

        async def down(pod: str, cid: str) -> float:
            t0 = time.perf_counter()
            await lc.down(pod, cid)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        downs = await asyncio.gather(*(down(p, c) for p, c, _ in started), return_exceptions=True)
        res.down_wall = time.perf_counter() - t0
        res.errors += [f"concurrent remove: {d!r}" for d in downs if isinstance(d, BaseException)]
        res.down_per_pod = [d for d in downs if isinstance(d, float)]
        res.cpu["concurrent_up"] = cpu_per_pod(before, mid, n)
        res.cpu["concurrent_down"] = cpu_per_pod(mid, proc_cpu(server.pid), n)


def cleanup_host(opts: Options, workdir: Path, seen: set[str]) -> list[str]:
    """Whatever is left after the server stopped: report it, then remove it."""
    problems = []
    for pid, cmd in processes_mentioning(str(opts.run_root) + "/"):
        problems.append(f"process left: {pid} {cmd[:160]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        reap(pid)
    left = mounts_under(opts.run_root, workdir)
    # The namespace-pin dir is a private bind mount of itself that the server keeps across
    # restarts on purpose (cri_async.network.pins): expected, removed without a report.
    pins = str(opts.run_root / "ns")
    if [m for m in left if m != pins]:
        problems.append(f"mounts left: {left}")
    libc = ctypes.CDLL(None, use_errno=True)
    for mp in sorted(left, key=len, reverse=True):
        libc.umount2(mp.encode(), 2)  # MNT_DETACH
    for sid in sorted(seen):
        rel = f"{SERVER_CGROUP}/pod-{sid[:16]}"
        if cgroup_dirs(rel):
            problems.append(f"cgroup left: /{rel}")
            problems += rmdir_cgroup_tree(rel)
    # Runtimes never remove a parent cgroup: /crb-floor itself is always there, and only a
    # container cgroup below it would be a leftover.
    floor_left = [d for top in cgroup_dirs(FLOOR_CGROUP) for d in top.iterdir() if d.is_dir()]
    if floor_left:
        problems.append(f"floor cgroups left: {sorted({d.name for d in floor_left})}")
    problems += rmdir_cgroup_tree(FLOOR_CGROUP)
    # The server's parent cgroup, if nothing else (another cri-async) uses it: rmdir only
    # ever removes an empty one.
    for d in cgroup_dirs(SERVER_CGROUP):
        with contextlib.suppress(OSError):
            d.rmdir()
    return problems


async def run_backend(
    opts: Options, backend: str, ref: str, image: im.BuiltImage, rootfs: Path
) -> BackendResult:
    res = BackendResult(backend, opts.iterations)
    if opts.run_root.exists() and any(opts.run_root.iterdir()):
        raise SystemExit(f"{opts.run_root} is not empty: another run? remove it first")
    binary = shutil.which(FLOOR_RUNTIME[backend])
    conmon = shutil.which("conmon")
    if binary is None or conmon is None:
        raise SystemExit(f"{FLOOR_RUNTIME[backend]} or conmon not found in PATH")
    if backend == "shimv2" and shutil.which("containerd-shim-runc-v2") is None:
        raise SystemExit("containerd-shim-runc-v2 not found in PATH (apt-get install containerd)")
    opts.run_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-lifecycle-{backend}-", dir=opts.tmp))
    caps = host_capabilities()
    fl = Floor(backend, binary, conmon, opts.run_root / "fr", opts.run_root / "fb", rootfs, caps)
    seen: set[str] = set()
    server = start_server(
        backend, workdir, opts.run_root, opts.python, opts.log_level, opts.server_module
    )
    try:
        await wait_ready(server)
        cli = CRIClient(server.socket)
        lc = Lifecycle(cli, ref, workdir / "logs", seen)
        try:
            t0 = time.perf_counter()
            image_id = await asyncio.wait_for(cli.pull(ref), 120)
            if image_id != image.image_id:
                raise RuntimeError(f"pulled {image_id}, want {image.image_id}")
            print(
                f"  server pid {server.pid} ready, image pulled in {time.perf_counter() - t0:.2f}s"
            )
            async with asyncio.timeout(PHASE_TIMEOUT):
                for _ in range(VERSION_CALLS):
                    res.version_rpc.append((await timed(cli.version()))[1])
                await sequential(opts, server, lc, fl, res)
            print(f"  sequential: {opts.iterations} rounds done", flush=True)
            if opts.concurrent:
                async with asyncio.timeout(PHASE_TIMEOUT):
                    await concurrent_phase(opts, server, lc, fl, res)
                print(f"  concurrent: {opts.concurrent} pods up and down", flush=True)
        except BaseException:
            print(f"--- {backend} server log (tail) ---\n{server.logs()}", file=sys.stderr)
            raise
        finally:
            try:
                async with asyncio.timeout(120):
                    n = await lc.remove_everything()
                if n:
                    res.errors.append(f"{n} pods were still there at the end (removed)")
            except Exception as e:
                res.errors.append(f"removing the pods failed: {e!r}")
            cli.close()
    finally:
        rc = server.stop()
        if rc not in (0, None):
            res.errors.append(f"server exited {rc} on SIGTERM")
        if opts.keep_logs is not None:
            opts.keep_logs.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(server.log, opts.keep_logs / f"{backend}-server.log")
        problems = cleanup_host(opts, workdir, seen)
        for p in problems:
            print(f"  cleanup: {p}")
        res.errors += [f"cleanup: {p}" for p in problems]
        if not mounts_under(opts.run_root, workdir):
            shutil.rmtree(opts.run_root, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)
    return res


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--iterations", type=int, default=50, help="sequential rounds (50)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (2)")
    p.add_argument("--concurrent", type=int, default=50, help="pods started at once (50)")
    p.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated (runc,crun,shimv2)"
    )
    p.add_argument("--no-conmon-floor", action="store_true", help="skip the conmon floor")
    p.add_argument("--json", type=Path, help="write samples and summary here")
    p.add_argument(
        "--run-root",
        type=Path,
        default=Path("/run/crb"),
        help="short dir for sockets, bundles, pins (/run/crb; must be empty or absent)",
    )
    p.add_argument(
        "--tmp",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the state dirs go (default: $TMPDIR or /tmp)",
    )
    p.add_argument("--log-level", default="info", help="the server's log level (info)")
    p.add_argument(
        "--server-module",
        default="cri_async.cli",
        help="run the server as python -m MODULE serve (cri_async.cli; e.g. a timing wrapper)",
    )
    p.add_argument("--keep-logs", type=Path, help="copy each server's log into this dir")
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile the server during each phase into DIR/<backend>-<phase>.txt",
    )
    p.add_argument("--py-spy-bin", help="the py-spy binary (default: py-spy in PATH)")
    p.add_argument(
        "--py-spy-idle", action="store_true", help="also sample idle threads (wall-clock view)"
    )
    p.add_argument("--py-spy-rate", type=int, default=250, help="samples per second (250)")
    a = p.parse_args(argv)
    if a.iterations < 1 or a.concurrent < 0 or a.warmup < 0:
        p.error("--iterations must be >= 1, --concurrent and --warmup >= 0")
    a.backends = [b for b in a.backends.split(",") if b]
    bad = [b for b in a.backends if b not in BACKENDS]
    if bad:
        p.error(f"unknown backend(s) {bad}; choose from {BACKENDS}")
    if len(os.fsencode(str(a.run_root))) > 40:
        p.error("--run-root must be short (conmon attach socket paths must fit 108 bytes)")
    return a


async def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root: real containers need mounts, namespaces and cgroups")
    py_spy_bin = None
    if args.py_spy is not None:
        py_spy_bin = args.py_spy_bin or shutil.which("py-spy")
        if py_spy_bin is None:
            raise SystemExit("py-spy not found: pip install py-spy, or pass --py-spy-bin")
    opts = Options(
        iterations=args.iterations,
        warmup=args.warmup,
        concurrent=args.concurrent,
        conmon_floor=not args.no_conmon_floor,
        run_root=args.run_root,
        tmp=args.tmp,
        python=sys.executable,
        log_level=args.log_level,
        server_module=args.server_module,
        keep_logs=args.keep_logs,
        py_spy=py_spy_bin,
        profile_dir=args.py_spy,
        profile_idle=args.py_spy_idle,
        profile_rate=args.py_spy_rate,
    )
    info = versions(opts.python)
    for k, v in info.items():
        print(f"{k + ':':<11}{v}")
    print(f"capabilities in the floor: {len(host_capabilities())} of the 14 defaults")
    become_subreaper()  # the floor's container processes are re-parented to us and reaped

    image = im.busybox_image(cmd=("sh",))
    results: list[BackendResult] = []
    rootfs_dir = Path(tempfile.mkdtemp(prefix="bench-lifecycle-rootfs-", dir=opts.tmp))
    try:
        rootfs = rootfs_dir / "rootfs"
        unpack_rootfs(image, rootfs)
        with LocalRegistry() as reg:
            im.push(reg, IMAGE_REPO, image, tag="latest")
            ref = reg.ref(IMAGE_REPO, "latest")
            print(f"image {ref} ({image.image_id[:19]}), rootfs for the floor in {rootfs}")
            for backend in args.backends:
                print(f"\n{backend}:", flush=True)
                results.append(await run_backend(opts, backend, ref, image, rootfs))
    finally:
        shutil.rmtree(rootfs_dir, ignore_errors=True)
    info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())

    for r in results:
        print_backend(r, opts.conmon_floor)
    print_summary(results)
    print(f"\nloadavg at the start {info['loadavg']}, at the end {info['loadavg_end']}")
    if opts.profile_dir is not None:
        for f in sorted(opts.profile_dir.glob("*.txt")):
            print(f"\n== py-spy {f} ==")
            print("\n".join(profile_summary(f)))
    if args.json is not None:
        doc = {
            "versions": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": [to_json(r) for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r.errors for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
