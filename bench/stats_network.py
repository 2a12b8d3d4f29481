"""ListContainerStats under container churn, and pod network setup/teardown beside the raw
CNI plugin floor.

What it measures. A busybox image is built in memory and pushed to a local CNCF registry
(``tests/support/registry.py``). A bridge network of its own is written as a conflist
(bridge ``crb<hex4>``, host-local IPAM on a free ``10.99.N.0/24`` with its ``dataDir`` in the
temp dir, then ``portmap`` with the ``portMappings`` capability), and one ``cri-async serve``
**process** is started on runc with that network (``[network] conf_dirs``); every figure
includes the unix socket, gRPC and protobuf (client: ``CRIClient``, one HTTP/2 connection,
as kubelet has). Then:

**Part 1, ListContainerStats.** ``--pods`` (20) pods x ``--per-pod`` (5) containers running
``sleep 1000`` (100), plus one empty "churn" pod. Once every one of the 100 has cpu (with
``usage_nano_cores``, i.e. two refreshes of the server's 5 s stats cache) and memory in
``ListContainerStats``, four windows follow, each sampling the server's ``utime+stime``
(``/proc/PID/stat``) at its start and end:

* **idle** (``--idle-s``, 5): nothing called; the server's background CPU (stats refresher,
  CNI config polling) per second;
* **stats** (``--stats-s``, 10): ``ListContainerStats`` (no filter) back to back, one call in
  flight (``--stats-interval-ms N``: one call every N ms instead), the client's wall latency
  of each call recorded. **CPU per call** = (server CPU - idle rate x window) / calls;
* **churn** (``--churn-s``, 10): the churn task alone, cycles of CreateContainer + Start +
  StopContainer (timeout 0: SIGKILL) + RemoveContainer in the churn pod, back to back: the
  server's CPU per churn cycle;
* **stats + churn** (``--mixed-s``, 30): both at once. CPU per call (an estimate) = (server
  CPU - idle rate x window - churn CPU per cycle x cycles) / calls.

Every response is checked: all 100 steady containers present with cpu and memory set (the
lowest count seen is reported). 200 ``Version`` calls on the idle server give the bare gRPC
round trip. To say where a slow call's time went, each call is also classed by what
overlapped it: a refresh of the server's stats cache (seen from the outside: the responses'
newest cpu timestamp changes; the call counts if it overlaps the 250 ms before the first
response with the new samples) and the churn RPC (create/start/stop/remove) running beside
it the longest, or none; p50/p99 are printed per class.

**Part 2, CNI ADD/DEL.** ``--cni-iterations`` (40) rounds after ``--warmup`` (2) untimed ones;
each round runs three kinds in turn, starting one further along each round (so none always
follows the kernel's deferred netns teardown of another):

* **cri-async**: ``RunPodSandbox`` (pod dir, namespace pinning, CNI ADD of loopback + bridge
  + portmap, cache writes, database) and then ``RemovePodSandbox`` straight away (it stops the
  pod first: CNI DEL, unpin, database), each timed from the client; the pod's IP is checked
  (untimed) in between;
* **library floor**: ``cri_async.network.cni.CNI.setup`` / ``teardown`` called in this
  process on the same conflist (its own cache dir on the same tmpfs), on namespaces pinned by
  this script: the same plugin execs and cache fsyncs, without gRPC, database or pinning;
* **raw floor**: a worker thread pins the namespaces as ``cri_async.network.pins`` does
  (``unshare --net=F --ipc=F --uts=F -- sh -c 'hostname "$1" && ip link set lo up'``), execs
  the plugins itself (``subprocess``, CNI_* env, stdin conf, no shell): ADD of loopback on
  ``lo``, then bridge -> portmap on ``eth0`` chained by ``prevResult``; then DEL in reverse
  order (portmap, bridge, loopback) with the ADD results as ``prevResult``; then unmounts the
  pins. Each exec is timed. **Overhead** = RunPodSandbox - (pin + ADD) and RemovePodSandbox -
  (DEL + unpin), p50 - p50 and p95 - p95.

``--host-port`` gives every pod (all three kinds) one hostPort mapping, so that portmap
writes DNAT rules; by default pods have none (portmap's ADD is then a pass-through).

Rerun (from the repository root, as root; runc, conmon, containernetworking-plugins and
docker-registry from Debian; about 2 minutes with the defaults, ~1 with ``--quick``)::

    .venv/bin/python bench/stats_network.py
    .venv/bin/python bench/stats_network.py --quick --json /tmp/sn.json
    .venv/bin/python bench/stats_network.py --only cni --cni-iterations 100 --host-port
    # where does the server's CPU go (py-spy from PyPI in its own venv): collapsed stacks
    # per phase into DIR, the hottest functions printed (--py-spy-idle: wall-clock view)
    python3 -m venv /tmp/pyspy-venv && /tmp/pyspy-venv/bin/pip install py-spy
    .venv/bin/python bench/stats_network.py --py-spy /tmp/sn-prof \\
        --py-spy-bin /tmp/pyspy-venv/bin/py-spy

Layout: state under a temp dir (``--tmp``); ``--run-root`` (``/run/crs``: short, conmon's
attach socket paths must fit 108 bytes; must be empty or absent) holds the socket, bundles,
the server's namespace pins and CNI cache, and the floors' pins (``bf/``, a private bind
mount) and cache. Everything is removed at the end: pods (containers stopped with timeout 0
first), then the server (SIGTERM), the floors' leftovers, then any process, mount, pod
cgroup, NAT rule of this network, lease or veth left (each one reported, exit status 1), and
the bridge.

Caveats: a shared 2-vCPU VM moves these numbers by +-20 % and more under other load (the
load average is printed at the start and the end); compare within one run. The server logs
at ``--log-level`` (info) to a file. ``sync = "normal"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import ipaddress
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchhost import (  # noqa: E402
    CPU,
    cgroup_dirs,
    cmd_version,
    mounts_under,
    pct,
    pdeathsig,
    proc_cpu,
    processes_mentioning,
    rmdir_cgroup_tree,
)

from cri_async import linux  # noqa: E402
from cri_async.api.runtime.v1 import api_pb2 as pb  # noqa: E402
from cri_async.client import CRIClient, container_config, pod_config  # noqa: E402
from cri_async.network.cni import CNI, PortMapping  # noqa: E402
from cri_async.network.natsweep import nat_cleanup  # noqa: E402
from tests.support import images as im  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

T = TypeVar("T")

PLUGIN_DIR = "/usr/lib/cni"
PLUGINS = ("bridge", "host-local", "loopback", "portmap")
TOOLS = ("runc", "conmon", "unshare", "ip", "iptables", "iptables-save", "docker-registry")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SERVER_CGROUP = "cri-async"  # cri_async.pods.host.DEFAULT_CGROUP_PARENT
IMAGE_REPO = "bench/busybox"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
RPC_TIMEOUT = 60.0
CMD_TIMEOUT = 30.0
STATS_READY_TIMEOUT = 40.0
SETTLE = 2.0
VERSION_CALLS = 200
NAMESPACES = ("net", "ipc", "uts")
PIN_SCRIPT = 'hostname "$1" && ip link set lo up'  # what cri_async.network.pins runs
PLUGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """Percentiles of one series, in ms."""

    n: int
    p50: float
    p95: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Dist:
        ms = [x * 1e3 for x in seconds]
        if not ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(ms), pct(ms, 50), pct(ms, 95), pct(ms, 99), min(ms), max(ms))


def sums(*series: Sequence[float]) -> list[float]:
    """Element-wise sums of equally long series (per-round totals)."""
    return [sum(v) for v in zip(*series, strict=True)]


# -- processes and host state ------------------------------------------------------------------


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(
        argv, capture_output=True, text=True, check=check, timeout=CMD_TIMEOUT
    ).stdout


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


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
    where = "import cri_async; print(cri_async.__file__)"
    source = subprocess.run(
        [python, "-c", where], capture_output=True, text=True, cwd="/", timeout=30
    ).stdout.strip()
    pkgs = ("runc", "conmon", "containernetworking-plugins")
    dpkg = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *pkgs],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.split()
    deb = dict(p.split("=", 1) for p in dpkg if "=" in p)
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
        "runc": f"{cmd_version(['runc', '--version'])} (deb {deb.get('runc', '?')})",
        "conmon": f"{cmd_version(['conmon', '--version'])} (deb {deb.get('conmon', '?')})",
        "cni-plugins": f"containernetworking-plugins {deb.get(pkgs[2], 'not installed')}",
        "kernel": platform.release(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- the network -------------------------------------------------------------------------------


def free_subnet() -> int:
    routes = sh("ip", "-4", "route", "show", "table", "all")
    addrs = sh("ip", "-4", "-o", "addr")
    for _ in range(500):
        n = secrets.randbelow(256)
        if f"10.99.{n}." not in routes and f"10.99.{n}." not in addrs:
            return n
    raise RuntimeError("no free 10.99.N.0/24")


@dataclass
class BenchNet:
    """The bench's own bridge network: bridge + host-local + portmap, like test_cni.py's."""

    tmp: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    n: int = field(default_factory=free_subnet)

    def __post_init__(self) -> None:
        self.bridge = f"crb{self.tag}"
        self.name = f"crb-{self.tag}"
        self.subnet = ipaddress.IPv4Network(f"10.99.{self.n}.0/24")
        self.conf_dir = self.tmp / "net.d"
        self.data_dir = self.tmp / "ipam"
        self.conf_dir.mkdir(parents=True)
        self.doc: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        }
        (self.conf_dir / "10-bench.conflist").write_text(json.dumps(self.doc, indent=1))

    def nat_rules(self) -> list[str]:
        text = sh("iptables-save", "-t", "nat")
        return [
            line
            for line in text.splitlines()
            if f"10.99.{self.n}." in line or f'\\"{self.name}\\"' in line
        ]

    def leases(self) -> list[str]:
        d = self.data_dir / self.name
        if not d.is_dir():
            return []
        return sorted(f for f in os.listdir(d) if f != "lock" and not f.startswith("last"))

    def veths(self) -> list[str]:
        out = sh("ip", "-o", "link", "show", "master", self.bridge, check=False)
        return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]

    def cleanup(self) -> list[str]:
        """Report and remove what is left of this network; the bridge always goes."""
        problems = []
        rules = self.nat_rules()
        if rules:
            problems.append(f"NAT rules of {self.name} left: {len(rules)}")
        for argv in nat_cleanup(sh("iptables-save", "-t", "nat"), f'name: "{self.name}" id: "'):
            sh("iptables", "-w", "-t", "nat", *argv, check=False)
        if self.nat_rules():
            problems.append(f"NAT rules still there after cleanup: {self.nat_rules()}")
        leases = self.leases()
        if leases:
            problems.append(f"leases left: {leases}")
        veths = self.veths()
        if veths:
            problems.append(f"veths left on {self.bridge}: {veths}")
            for v in veths:
                sh("ip", "link", "del", v, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        if self.bridge in sh("ip", "-o", "link"):
            problems.append(f"bridge {self.bridge} could not be deleted")
        return problems


# -- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

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
                print("warning: the server ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(opts: Options, workdir: Path, net: BenchNet) -> Server:
    sock = opts.run_root / "cri.sock"
    cfg = workdir / "config.toml"
    cfg.write_text(
        f'[server]\nsocket = "{sock}"\n'
        f'[log]\nlevel = "{opts.log_level}"\n'
        f'[state]\nroot = "{workdir / "state"}"\nrun_root = "{opts.run_root}"\n'
        'sync = "normal"\n'
        '[images]\nbackend = "registry"\n'
        '[runtimes.""]\nbackend = "runc"\n'
        f'[network]\nconf_dirs = ["{net.conf_dir}"]\nbin_dirs = ["{PLUGIN_DIR}"]\n'
    )
    log = workdir / "server.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [opts.python, "-m", "cri_async.cli", "serve", "--config", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=pdeathsig(),
        )
    return Server(proc, sock, log)


async def wait_ready(server: Server) -> None:
    """Serving, and NetworkReady (else RunPodSandbox would give pods loopback only)."""
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.logs()}")
        if server.socket.exists():
            client = CRIClient(server.socket)
            try:
                st = await asyncio.wait_for(client.runtime.Status(pb.StatusRequest()), 2)
                conds = {c.type: c for c in st.status.conditions}
                net = conds.get("NetworkReady")
                if net is not None and net.status:
                    return
                last = net
            except Exception as e:  # not serving yet
                last = e
            finally:
                client.close()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server not ready after {START_TIMEOUT}s ({last!r}):\n{server.logs()}")


@contextlib.contextmanager
def py_spy(opts: Options, pid: int, name: str) -> Iterator[None]:
    """``py-spy record`` of the server while the body runs (no-op without --py-spy)."""
    if opts.py_spy is None or opts.profile_dir is None:
        yield
        return
    out = opts.profile_dir / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [opts.py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    argv += ["--format", "raw", "--output", str(out)]
    if opts.profile_idle:
        argv.append("--idle")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # let it attach before the phase starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)


LINENO = re.compile(r":\d+\)$")
OUR_FRAMES = re.compile(r"\((cri_async/(?!cli\.py)|grpclib/|h2/|google/)|subprocess|to_thread")


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """The hottest functions of a collapsed-stack file: inclusive and self shares."""
    total = 0
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [LINENO.sub(")", fr) for fr in stack.split(";")]
        total += count
        self_[frames[-1]] += count
        for fr in set(frames):
            incl[fr] += count
    if not total:
        return ["(no samples)"]
    ours = Counter({fr: c for fr, c in incl.items() if OUR_FRAMES.search(fr)})
    out = [f"{total} samples (250 Hz, on-CPU)"]
    out.append("  inclusive, cri_async / grpclib / h2 / protobuf / subprocess frames:")
    out += [f"    {c / total:6.1%}  {fr}" for fr, c in ours.most_common(top)]
    out.append("  self (innermost frame):")
    out += [f"    {c / total:6.1%}  {fr}" for fr, c in self_.most_common(top)]
    return out


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    async with asyncio.timeout(RPC_TIMEOUT):
        r = await aw
    return r, time.perf_counter() - t0


@dataclass
class Options:
    run_root: Path
    tmp: Path
    python: str
    log_level: str
    pods: int
    per_pod: int
    idle_s: float
    stats_s: float
    churn_s: float
    mixed_s: float
    cni_iterations: int
    warmup: int
    host_port: bool
    keep_logs: Path | None
    py_spy: str | None
    profile_dir: Path | None
    profile_idle: bool
    stats_interval: float


# -- part 1: ListContainerStats under churn ----------------------------------------------------


@dataclass
class Window:
    """One measurement window of part 1."""

    name: str
    wall_s: float = 0.0
    cpu: CPU = field(default_factory=lambda: CPU(0.0, 0.0))
    client_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # of each call, from the window's start
    sample_ts: list[int] = field(default_factory=list)  # newest cpu timestamp in each response
    churn_spans: list[tuple[str, float, float]] = field(default_factory=list)
    resp_bytes: int = 0
    min_total: int = 0
    max_total: int = 0
    min_with_cpu_mem: int = -1  # of the steady containers, over all responses
    min_with_rate: int = -1
    churn_cycles: list[float] = field(default_factory=list)
    churn_steps: dict[str, list[float]] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "server_cpu_s": self.cpu.self_s,
            "server_children_cpu_s": self.cpu.children_s,
            "client_cpu_s": self.client_cpu_s,
            "calls": self.calls,
            "latency_ms": vars(Dist.of(self.latencies)),
            "response_bytes": self.resp_bytes,
            "containers_in_response": [self.min_total, self.max_total],
            "min_steady_with_cpu_and_memory": self.min_with_cpu_mem,
            "min_steady_with_usage_nano_cores": self.min_with_rate,
            "churn_cycles": len(self.churn_cycles),
            "churn_cycle_ms": vars(Dist.of(self.churn_cycles)),
            "churn_steps_ms": {k: vars(Dist.of(v)) for k, v in self.churn_steps.items()},
            "latency_ms_by_overlap": {k: vars(Dist.of(v)) for k, v in attribute(self).items()},
        }


@dataclass
class StatsResult:
    pods: int = 0
    containers: int = 0
    setup_s: float = math.nan
    stats_ready_s: float = math.nan
    version_rpc: list[float] = field(default_factory=list)
    windows: dict[str, Window] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def idle_rate(self) -> float:
        w = self.windows.get("idle")
        return w.cpu.self_s / w.wall_s if w and w.wall_s > 0 else 0.0

    def churn_cpu_per_cycle(self) -> float:
        w = self.windows.get("churn")
        if not w or not w.churn_cycles:
            return math.nan
        return (w.cpu.self_s - self.idle_rate() * w.wall_s) / len(w.churn_cycles)

    def cpu_per_call(self, name: str) -> float:
        """Server CPU (s) per ListContainerStats call in window ``name``, background
        (idle rate) and, under churn, the churn's CPU per cycle subtracted."""
        w = self.windows.get(name)
        if not w or not w.calls:
            return math.nan
        extra = self.idle_rate() * w.wall_s
        if w.churn_cycles:
            extra += self.churn_cpu_per_cycle() * len(w.churn_cycles)
        return (w.cpu.self_s - extra) / w.calls

    def summary(self) -> dict[str, Any]:
        return {
            "pods": self.pods,
            "containers": self.containers,
            "setup_s": self.setup_s,
            "stats_ready_s": self.stats_ready_s,
            "version_rpc_ms": vars(Dist.of(self.version_rpc)),
            "idle_server_cpu_per_s": self.idle_rate(),
            "churn_server_cpu_ms_per_cycle": self.churn_cpu_per_cycle() * 1e3,
            "server_cpu_ms_per_call": {
                k: self.cpu_per_call(k) * 1e3 for k in ("stats", "mixed") if k in self.windows
            },
            "windows": {k: w.summary() for k, w in self.windows.items()},
        }


REFRESH_SPAN = 0.25  # s before a refresh's samples first appear that count as "in the refresh"


def attribute(w: Window) -> dict[str, list[float]]:
    """Each call's latency under what overlapped it: a stats cache refresh (from
    REFRESH_SPAN before the first response carrying new sample timestamps to the end of
    that response), a churn RPC (create/start/stop/remove, the one overlapping most), or
    ``none``. A call can count under "refresh" and a churn step both."""
    ends = [s + lat for s, lat in zip(w.starts, w.latencies, strict=True)]
    refreshes = [
        (ends[i - 1] - REFRESH_SPAN, ends[i])
        for i in range(1, len(w.sample_ts))
        if w.sample_ts[i] != w.sample_ts[i - 1] and w.sample_ts[i - 1]
    ]
    spans = sorted(w.churn_spans, key=lambda x: x[1])
    out: dict[str, list[float]] = {}
    j = 0
    for start, end, lat in zip(w.starts, ends, w.latencies, strict=True):
        labels = []
        if any(a < end and start < b for a, b in refreshes):
            labels.append("refresh")
        while j < len(spans) and spans[j][2] < start:
            j += 1
        best, most = "", 0.0
        for label, a, b in spans[j:]:
            if a >= end:
                break
            ov = min(b, end) - max(a, start)
            if ov > most:
                best, most = label, ov
        if best:
            labels.append(best)
        for label in labels or ["none"]:
            out.setdefault(label, []).append(lat)
    return out


def check_response(
    resp: pb.ListContainerStatsResponse, steady: set[str]
) -> tuple[int, int, int, int]:
    """(entries, steady containers with cpu and memory set, ... with usage_nano_cores, the
    newest cpu sample timestamp: it changes when the server's stats cache has refreshed)."""
    full = rate = ts = 0
    for s in resp.stats:
        if s.attributes.id not in steady:
            continue
        ts = max(ts, s.cpu.timestamp)
        if (
            s.HasField("cpu")
            and s.cpu.HasField("usage_core_nano_seconds")
            and s.HasField("memory")
            and s.memory.HasField("working_set_bytes")
        ):
            full += 1
            if s.cpu.HasField("usage_nano_cores"):
                rate += 1
    return len(resp.stats), full, rate, ts


class Part1:
    def __init__(self, cli: CRIClient, server: Server, ref: str, logs: Path, seen: set[str]):
        self.cli = cli
        self.server = server
        self.ref = ref
        self.logs = logs
        self.seen = seen
        self.steady: set[str] = set()
        self.churn_pod = ""
        self.churn_cfg: pb.PodSandboxConfig | None = None
        self.churn_n = 0

    async def up(self, opts: Options, res: StatsResult) -> None:
        sem = asyncio.Semaphore(4)

        async def pod(i: int) -> list[str]:
            async with sem:
                name = f"stats-{i}"
                pcfg = pod_config(name, "bench-stats", log_directory=str(self.logs / name))
                sid = await self.cli.run_pod(pcfg)
                self.seen.add(sid)
                cids = []
                for j in range(opts.per_pod):
                    ccfg = container_config(
                        f"c{j}", self.ref, command=["sleep", "1000"], log_path=f"c{j}/0.log"
                    )
                    cid = await self.cli.create_container(sid, ccfg, pcfg)
                    await self.cli.start_container(cid)
                    cids.append(cid)
                return cids

        t0 = time.perf_counter()
        for cids in await asyncio.gather(*(pod(i) for i in range(opts.pods))):
            self.steady.update(cids)
        res.setup_s = time.perf_counter() - t0
        res.pods, res.containers = opts.pods, len(self.steady)
        self.churn_cfg = pod_config("churn", "bench-stats", log_directory=str(self.logs / "churn"))
        self.churn_pod = await self.cli.run_pod(self.churn_cfg)
        self.seen.add(self.churn_pod)

    async def wait_stats(self, res: StatsResult) -> None:
        """Until every steady container has cpu (with a rate) and memory in the stats."""
        t0 = time.perf_counter()
        full = rate = 0
        while time.perf_counter() - t0 < STATS_READY_TIMEOUT:
            resp = await self.cli.runtime.ListContainerStats(pb.ListContainerStatsRequest())
            _, full, rate, _ = check_response(resp, self.steady)
            if rate == len(self.steady):
                res.stats_ready_s = time.perf_counter() - t0
                return
            await asyncio.sleep(0.5)
        res.errors.append(
            f"stats not complete after {STATS_READY_TIMEOUT:.0f}s: {full} of "
            f"{len(self.steady)} with cpu+memory, {rate} with usage_nano_cores"
        )

    async def stats_loop(self, w: Window, start: float, deadline: float, interval: float) -> None:
        rt = self.cli.runtime
        req = pb.ListContainerStatsRequest()
        lo_total, hi_total, lo_full, lo_rate = 1 << 30, 0, 1 << 30, 1 << 30
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            resp = await rt.ListContainerStats(req, timeout=RPC_TIMEOUT)
            w.latencies.append(time.perf_counter() - t0)
            w.starts.append(t0 - start)
            total, full, rate, ts = check_response(resp, self.steady)
            w.sample_ts.append(ts)
            lo_total, hi_total = min(lo_total, total), max(hi_total, total)
            lo_full, lo_rate = min(lo_full, full), min(lo_rate, rate)
            if not w.resp_bytes:
                w.resp_bytes = resp.ByteSize()
            if interval > 0:
                await asyncio.sleep(max(0.0, t0 + interval - time.perf_counter()))
        if w.latencies:
            w.min_total, w.max_total = lo_total, hi_total
            w.min_with_cpu_mem, w.min_with_rate = lo_full, lo_rate

    async def churn_loop(self, w: Window, start: float, deadline: float) -> None:
        rt = self.cli.runtime
        assert self.churn_cfg is not None
        pod, pcfg = self.churn_pod, self.churn_cfg
        while time.perf_counter() < deadline:
            name = f"churn-{self.churn_n}"
            self.churn_n += 1
            ccfg = container_config(
                name, self.ref, command=["sleep", "1000"], log_path=f"{name}/0.log"
            )
            t0 = time.perf_counter()
            cid = ""

            async def step(label: str, aw: Awaitable[Any]) -> Any:
                r, took = await timed(aw)
                end = time.perf_counter()
                w.churn_steps.setdefault(label, []).append(took)
                w.churn_spans.append((label, end - took - start, end - start))
                return r

            cid = await step("create", self.cli.create_container(pod, ccfg, pcfg))
            await step("start", self.cli.start_container(cid))
            stop = pb.StopContainerRequest(container_id=cid, timeout=0)
            await step("stop", rt.StopContainer(stop))
            await step("remove", rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid)))
            w.churn_cycles.append(time.perf_counter() - t0)

    async def window(
        self, opts: Options, name: str, seconds: float, *, stats: bool, churn: bool
    ) -> Window:
        w = Window(name)
        await asyncio.sleep(SETTLE if churn or name == "idle" else 0.5)
        with py_spy(opts, self.server.pid, f"stats-{name}"):
            cpu0, c0 = proc_cpu(self.server.pid), time.process_time()
            t0 = time.perf_counter()
            deadline = t0 + seconds
            jobs: list[Awaitable[None]] = []
            if stats:
                jobs.append(self.stats_loop(w, t0, deadline, opts.stats_interval))
            if churn:
                jobs.append(self.churn_loop(w, t0, deadline))
            if not jobs:
                jobs.append(asyncio.sleep(seconds))
            await asyncio.gather(*jobs)
            w.wall_s = time.perf_counter() - t0
            w.cpu = proc_cpu(self.server.pid) - cpu0
            w.client_cpu_s = time.process_time() - c0
        return w

    async def down(self) -> None:
        """Stop every container at once (timeout 0), then remove the pods."""
        rt = self.cli.runtime
        ctrs = (await rt.ListContainers(pb.ListContainersRequest())).containers

        async def stop(cid: str) -> None:
            await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))

        sem = asyncio.Semaphore(8)

        async def bounded(aw: Awaitable[None]) -> None:
            async with sem:
                await aw

        await asyncio.gather(*(bounded(stop(c.id)) for c in ctrs))
        pods = (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items
        await asyncio.gather(
            *(
                bounded(remove_pod(self.cli, p.id))
                for p in pods
                if p.metadata.namespace == "bench-stats"
            )
        )


async def remove_pod(cli: CRIClient, sid: str) -> None:
    rt = cli.runtime
    with contextlib.suppress(Exception):
        await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))


async def part_stats(
    opts: Options, server: Server, cli: CRIClient, ref: str, logs: Path, seen: set[str]
) -> StatsResult:
    res = StatsResult()
    for _ in range(VERSION_CALLS):
        res.version_rpc.append((await timed(cli.version()))[1])
    p = Part1(cli, server, ref, logs, seen)
    try:
        await p.up(opts, res)
        print(f"  {res.containers} containers in {res.pods} pods up in {res.setup_s:.1f}s")
        await p.wait_stats(res)
        print(f"  stats complete after {res.stats_ready_s:.1f}s")
        plan = (
            ("idle", opts.idle_s, False, False),
            ("stats", opts.stats_s, True, False),
            ("churn", opts.churn_s, False, True),
            ("mixed", opts.mixed_s, True, True),
        )
        for name, seconds, stats, churn in plan:
            w = await p.window(opts, name, seconds, stats=stats, churn=churn)
            res.windows[name] = w
            print(
                f"  {name}: {w.wall_s:.1f}s, {w.calls} stats calls, "
                f"{len(w.churn_cycles)} churn cycles, server CPU {w.cpu.self_s:.2f}s",
                flush=True,
            )
            if stats and w.min_with_cpu_mem < res.containers:
                res.errors.append(
                    f"{name}: a response had only {w.min_with_cpu_mem} of the "
                    f"{res.containers} containers with cpu+memory"
                )
    finally:
        t0 = time.perf_counter()
        await p.down()
        print(f"  part 1 pods removed in {time.perf_counter() - t0:.1f}s")
    return res


# -- part 2: CNI ADD/DEL -----------------------------------------------------------------------


def pin_namespaces(pins: Path, sid: str, hostname: str) -> list[str]:
    """net/ipc/uts pinned on files under ``pins`` the way cri_async.network.pins does."""
    argv = ["unshare"]
    files = []
    for kind in NAMESPACES:
        f = pins / kind / sid
        f.touch()
        files.append(str(f))
        argv.append(f"--{kind}={f}")
    argv += ["--", "/bin/sh", "-c", PIN_SCRIPT, "sh", hostname]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=CMD_TIMEOUT)
    if r.returncode != 0:
        unpin_namespaces(files)
        raise RuntimeError(f"unshare failed: {r.stderr.decode(errors='replace').strip()}")
    return files


def unpin_namespaces(files: Sequence[str]) -> None:
    for f in files:
        linux.umount(f)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)


class RawCNI:
    """The plugins exec'd straight from a worker thread: the floor under any CNI library."""

    def __init__(self, doc: dict[str, Any], plugin_dir: str) -> None:
        self.doc = doc
        self.plugin_dir = plugin_dir
        self.version = str(doc["cniVersion"])

    def _conf(self, name: str, plugin: dict[str, Any], prev: Any, rc: dict[str, Any]) -> bytes:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf["name"] = name
        conf["cniVersion"] = self.version
        caps = plugin.get("capabilities") or {}
        wanted = {k: v for k, v in rc.items() if caps.get(k) is True}
        if wanted:
            conf["runtimeConfig"] = wanted
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf, separators=(",", ":")).encode()

    def _exec(self, plugin: str, env: dict[str, str], stdin: bytes) -> tuple[bytes, float]:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [os.path.join(self.plugin_dir, plugin)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
        )
        out, err = p.communicate(stdin)  # no timeout: Popen.wait(timeout) sleep-polls
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            msg = (out or err).decode(errors="replace").strip()
            raise RuntimeError(f"plugin {plugin} {env['CNI_COMMAND']} exited {p.returncode}: {msg}")
        return out, dt

    def _env(self, command: str, cid: str, netns: str, ifname: str, args: str) -> dict[str, str]:
        return {
            "PATH": PLUGIN_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.plugin_dir,
            "CNI_ARGS": args,
        }

    def once(
        self, pins: Path, cid: str, pod: str, rc: dict[str, Any], subnet: ipaddress.IPv4Network
    ) -> dict[str, float]:
        """pin, ADD (lo, chain), DEL (chain reversed, lo), unpin; each step timed."""
        t: dict[str, float] = {}
        args = (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench-cni;K8S_POD_NAME={pod};"
            f"K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=uid-{pod}"
        )
        t0 = time.perf_counter()
        files = pin_namespaces(pins, cid, pod)
        t["pin"] = time.perf_counter() - t0
        netns = files[0]
        added: list[tuple[dict[str, Any], Any]] = []  # (plugin, prevResult it got)
        lo_result: Any = None
        try:
            out, t["add:loopback"] = self._exec(
                "loopback",
                self._env("ADD", cid, netns, "lo", args),
                self._conf("cni-loopback", {"type": "loopback"}, None, {}),
            )
            lo_result = json.loads(out)
            prev: Any = None
            for plugin in self.doc["plugins"]:
                env = self._env("ADD", cid, netns, "eth0", args)
                added.append((plugin, prev))
                out, t[f"add:{plugin['type']}"] = self._exec(
                    plugin["type"], env, self._conf(self.doc["name"], plugin, prev, rc)
                )
                prev = json.loads(out)
            ips = [ipaddress.ip_interface(i["address"]).ip for i in prev.get("ips", [])]
            if not ips or ips[0] not in subnet:
                raise RuntimeError(f"raw ADD: unexpected result {prev}")
            final = prev
            added.clear()  # complete: DEL the whole chain with the final result
            for plugin in reversed(self.doc["plugins"]):
                env = self._env("DEL", cid, netns, "eth0", args)
                _, t[f"del:{plugin['type']}"] = self._exec(
                    plugin["type"], env, self._conf(self.doc["name"], plugin, final, rc)
                )
            _, t["del:loopback"] = self._exec(
                "loopback",
                self._env("DEL", cid, netns, "lo", args),
                self._conf("cni-loopback", {"type": "loopback"}, lo_result, {}),
            )
            lo_result = None
        finally:
            for plugin, p in reversed(added):  # a failed ADD: undo best-effort
                with contextlib.suppress(Exception):
                    env = self._env("DEL", cid, netns, "eth0", args)
                    self._exec(plugin["type"], env, self._conf(self.doc["name"], plugin, p, rc))
            t0 = time.perf_counter()
            unpin_namespaces(files)
            t["unpin"] = time.perf_counter() - t0
        return t


RAW_ADD = ("add:loopback", "add:bridge", "add:portmap")
RAW_DEL = ("del:portmap", "del:bridge", "del:loopback")


@dataclass
class CNIResult:
    iterations: int
    host_port: bool
    server: dict[str, list[float]] = field(default_factory=dict)
    library: dict[str, list[float]] = field(default_factory=dict)
    raw: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def raw_add(self) -> list[float]:
        return sums(*(self.raw.get(k, []) for k in RAW_ADD)) if self.raw else []

    def raw_del(self) -> list[float]:
        return sums(*(self.raw.get(k, []) for k in RAW_DEL)) if self.raw else []

    def floor_run(self) -> list[float]:
        return sums(self.raw.get("pin", []), self.raw_add()) if self.raw else []

    def floor_remove(self) -> list[float]:
        return sums(self.raw_del(), self.raw.get("unpin", [])) if self.raw else []

    def summary(self) -> dict[str, Any]:
        def d(xs: Sequence[float]) -> dict[str, float]:
            return vars(Dist.of(xs))

        def over(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
            x, y = Dist.of(a), Dist.of(b)
            return {"p50": x.p50 - y.p50, "p95": x.p95 - y.p95}

        s, lib = self.server, self.library
        return {
            "iterations": self.iterations,
            "host_port": self.host_port,
            "cri_async": {k: d(v) for k, v in s.items()},
            "library": {k: d(v) for k, v in lib.items()},
            "raw": {k: d(v) for k, v in self.raw.items()}
            | {
                "add_total": d(self.raw_add()),
                "del_total": d(self.raw_del()),
                "pin_plus_add": d(self.floor_run()),
                "del_plus_unpin": d(self.floor_remove()),
            },
            "overhead_ms": {
                "run_pod_over_pin_plus_add": over(s.get("run_pod", []), self.floor_run()),
                "remove_pod_over_del_plus_unpin": over(
                    s.get("remove_pod", []), self.floor_remove()
                ),
                "library_setup_over_raw_add": over(lib.get("setup", []), self.raw_add()),
                "library_teardown_over_raw_del": over(lib.get("teardown", []), self.raw_del()),
            },
            "server_cpu_ms_per_pod": self.cpu,
        }


def port_mapping(i: int, kind: int) -> int:
    """A host port per pod and kind, away from the ephemeral range."""
    return 20000 + (i % 3000) * 3 + kind


async def part_cni(
    opts: Options, server: Server, cli: CRIClient, net: BenchNet, logs: Path, seen: set[str]
) -> CNIResult:
    res = CNIResult(opts.cni_iterations, opts.host_port)
    pins = opts.run_root / "bf"
    lib = CNI([str(net.conf_dir)], [PLUGIN_DIR], str(opts.run_root / "bcache"), timeout=30)
    await lib.reload()
    if not lib.status()[0]:
        raise RuntimeError(f"CNI library not ready: {lib.status()}")
    raw = RawCNI(net.doc, PLUGIN_DIR)
    rt = cli.runtime

    async def via_server(i: int, name: str) -> dict[str, float]:
        pcfg = pod_config(name, "bench-cni", log_directory=str(logs / name))
        if opts.host_port:
            pcfg.port_mappings.append(
                pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=port_mapping(i, 0))
            )
        sid, t_run = await timed(cli.run_pod(pcfg))
        seen.add(sid)
        st = await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid))
        ip = st.status.network.ip
        if not ip or ipaddress.ip_address(ip) not in net.subnet:
            res.errors.append(f"pod {name}: ip {ip!r} not in {net.subnet}")
        _, t_rm = await timed(rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid)))
        return {"run_pod": t_run, "remove_pod": t_rm}

    async def via_library(i: int, name: str) -> dict[str, float]:
        cid = f"bench-lib-{name}"
        files = await asyncio.to_thread(pin_namespaces, pins, cid, name)
        try:
            pm = [PortMapping(port_mapping(i, 1), 80, "TCP")] if opts.host_port else []
            r, t_setup = await timed(
                lib.setup(
                    cid,
                    files[0],
                    pod_name=name,
                    pod_namespace="bench-cni",
                    pod_uid=f"uid-{name}",
                    port_mappings=pm,
                )
            )
            if not r.ips or ipaddress.ip_address(r.ips[0]) not in net.subnet:
                res.errors.append(f"library {name}: ips {r.ips}")
            _, t_down = await timed(lib.teardown(cid, None))
        finally:
            await asyncio.to_thread(unpin_namespaces, files)
        return {"setup": t_setup, "teardown": t_down}

    def via_raw(i: int, name: str) -> dict[str, float]:
        rc: dict[str, Any] = {}
        if opts.host_port:
            hp = port_mapping(i, 2)
            rc["portMappings"] = [{"hostPort": hp, "containerPort": 80, "protocol": "tcp"}]
        return raw.once(pins, f"bench-raw-{name}", name, rc, net.subnet)

    kinds = ("cri-async", "library", "raw")

    async def one(kind: str, i: int, name: str) -> dict[str, float]:
        if kind == "cri-async":
            return await via_server(i, name)
        if kind == "library":
            return await via_library(i, name)
        return await asyncio.to_thread(via_raw, i, name)

    for i in range(opts.warmup):
        for kind in kinds:
            await one(kind, i, f"warm-{i}")
    await asyncio.sleep(SETTLE)
    server_cpu = CPU(0.0, 0.0)
    targets = {"cri-async": res.server, "library": res.library, "raw": res.raw}
    with py_spy(opts, server.pid, "cni"):
        for i in range(opts.cni_iterations):
            shift = i % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                before = proc_cpu(server.pid)
                t = await one(kind, i, f"n{i}")
                if kind == "cri-async":
                    d = proc_cpu(server.pid) - before
                    server_cpu = CPU(
                        server_cpu.self_s + d.self_s, server_cpu.children_s + d.children_s
                    )
                for k, v in t.items():
                    targets[kind].setdefault(k, []).append(v)
    n = max(opts.cni_iterations, 1)
    res.cpu = {"self": server_cpu.self_s * 1e3 / n, "children": server_cpu.children_s * 1e3 / n}
    left = lib.cached()
    if left:
        res.errors.append(f"library CNI cache entries left: {left}")
        for sid in left:
            with contextlib.suppress(Exception):
                await lib.teardown(sid, None)
    leases, veths = net.leases(), net.veths()
    if leases or veths:
        res.errors.append(f"after part 2: leases {leases}, veths {veths}")
    return res


# -- orchestration and cleanup -----------------------------------------------------------------


def cleanup_host(opts: Options, workdir: Path, seen: set[str], cgroup_existed: bool) -> list[str]:
    """Whatever is left after the server stopped: report it, then remove it."""
    problems = []
    for pid, cmd in processes_mentioning(str(opts.run_root) + "/"):
        problems.append(f"process left: {pid} {cmd[:160]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        reap(pid)
    left = mounts_under(opts.run_root, workdir)
    # Expected and not reported: the server's pin dir (a private bind mount it keeps across
    # restarts on purpose) and the floors' own pin dir.
    expected = {str(opts.run_root / "ns"), str(opts.run_root / "bf")}
    unexpected = [m for m in left if m not in expected]
    if unexpected:
        problems.append(f"mounts left: {unexpected}")
    for mp in sorted(left, key=len, reverse=True):
        linux.umount(mp)
    for sid in sorted(seen):
        rel = f"{SERVER_CGROUP}/pod-{sid[:16]}"
        if cgroup_dirs(rel):
            problems.append(f"cgroup left: /{rel}")
            problems += rmdir_cgroup_tree(rel)
    if not cgroup_existed:  # ours: rmdir only removes it if nobody else put anything there
        for d in cgroup_dirs(SERVER_CGROUP):
            with contextlib.suppress(OSError):
                d.rmdir()
    return problems


def make_private_dir(d: Path) -> None:
    """A private bind mount of itself: nsfs pins below it never propagate (as the server's)."""
    d.mkdir(parents=True, exist_ok=True)
    linux.mount(str(d), str(d), None, linux.MS_BIND)
    linux.mount("none", str(d), None, linux.MS_PRIVATE)
    for k in NAMESPACES:
        (d / k).mkdir(exist_ok=True)


@dataclass
class Results:
    stats: StatsResult | None = None
    cni: CNIResult | None = None
    errors: list[str] = field(default_factory=list)


async def run_all(opts: Options, only: str, ref: str, image: im.BuiltImage) -> Results:
    out = Results()
    if opts.run_root.exists() and any(opts.run_root.iterdir()):
        raise SystemExit(f"{opts.run_root} is not empty: another run? remove it first")
    opts.run_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-statsnet-", dir=opts.tmp))
    net = BenchNet(workdir)
    print(f"network {net.name}: bridge {net.bridge}, subnet {net.subnet}")
    cgroup_existed = bool(cgroup_dirs(SERVER_CGROUP))
    seen: set[str] = set()
    logs = workdir / "logs"
    make_private_dir(opts.run_root / "bf")
    server = start_server(opts, workdir, net)
    try:
        await wait_ready(server)
        cli = CRIClient(server.socket)
        try:
            t0 = time.perf_counter()
            image_id = await asyncio.wait_for(cli.pull(ref), 120)
            if image_id != image.image_id:
                raise RuntimeError(f"pulled {image_id}, want {image.image_id}")
            print(f"server pid {server.pid} ready, image pulled in {time.perf_counter() - t0:.2f}s")
            if only in ("all", "stats"):
                print("\npart 1: ListContainerStats", flush=True)
                out.stats = await part_stats(opts, server, cli, ref, logs, seen)
                await asyncio.sleep(SETTLE)
            if only in ("all", "cni"):
                print("\npart 2: CNI ADD/DEL", flush=True)
                out.cni = await part_cni(opts, server, cli, net, logs, seen)
                print(f"  {opts.cni_iterations} rounds done")
        except BaseException:
            print(f"--- server log (tail) ---\n{server.logs()}", file=sys.stderr)
            raise
        finally:
            try:
                async with asyncio.timeout(180):
                    rt = cli.runtime
                    pods = (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items
                    if pods:
                        out.errors.append(f"{len(pods)} pods still there at the end (removed)")
                    for c in (await rt.ListContainers(pb.ListContainersRequest())).containers:
                        with contextlib.suppress(Exception):
                            await rt.StopContainer(
                                pb.StopContainerRequest(container_id=c.id, timeout=0)
                            )
                    for p in pods:
                        await remove_pod(cli, p.id)
            except Exception as e:
                out.errors.append(f"removing the pods failed: {e!r}")
            cli.close()
    finally:
        rc = server.stop()
        if rc not in (0, None):
            out.errors.append(f"server exited {rc} on SIGTERM")
        if opts.keep_logs is not None:
            opts.keep_logs.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(server.log, opts.keep_logs / "stats-network-server.log")
        # The floors' leftovers (after a failure): pins under bf/, cache entries.
        bf = opts.run_root / "bf"
        for k in NAMESPACES:
            for f in (bf / k).glob("*") if (bf / k).is_dir() else []:
                out.errors.append(f"floor pin left: {f}")
                unpin_namespaces([str(f)])
        problems = cleanup_host(opts, workdir, seen, cgroup_existed)
        problems += net.cleanup()
        for problem in problems:
            print(f"  cleanup: {problem}")
        out.errors += [f"cleanup: {problem}" for problem in problems]
        if not mounts_under(opts.run_root, workdir):
            shutil.rmtree(opts.run_root, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            out.errors.append(f"mounts still under {opts.run_root} or {workdir}: kept them")
    return out


# -- report ------------------------------------------------------------------------------------


def print_stats(r: StatsResult) -> None:
    print(f"\n== part 1: ListContainerStats, {r.containers} running containers in {r.pods} pods ==")
    print(
        f"setup {r.setup_s:.1f}s; all {r.containers} with cpu rate + memory after "
        f"{r.stats_ready_s:.1f}s; Version RPC p50 {Dist.of(r.version_rpc).p50:.2f} ms"
    )
    head = f"{'window':22}{'calls':>7}{'p50':>8}{'p99':>8}{'max':>8}{'cpu/call':>10}"
    head += f"{'srv cpu':>9}{'churn':>7}"
    print(head + "   (ms; srv cpu = server CPU / wall; churn = cycles)")
    print("-" * len(head))
    labels = {
        "idle": "idle (nothing)",
        "stats": "stats, no churn",
        "churn": "churn only",
        "mixed": "stats + churn",
    }
    for k, label in labels.items():
        w = r.windows.get(k)
        if w is None:
            continue
        d = Dist.of(w.latencies)
        per_call = r.cpu_per_call(k) * 1e3 if w.calls else math.nan
        util = w.cpu.self_s / w.wall_s if w.wall_s else math.nan
        cells = f"{label:22}{w.calls:>7}{d.p50:8.2f}{d.p99:8.2f}{d.max:8.1f}{per_call:10.2f}"
        print(cells + f"{util:9.0%}{len(w.churn_cycles):>7}")
    print(
        f"cpu/call = server CPU per call, less the idle rate ({r.idle_rate() * 1e3:.1f} ms/s)"
        f" and, under churn, {r.churn_cpu_per_cycle() * 1e3:.1f} ms per churn cycle"
        " (create+start+stop+remove, from the churn-only window)"
    )
    for k in ("stats", "mixed"):
        w = r.windows.get(k)
        if w is None or not w.calls:
            continue
        print(
            f"{k}: response {w.resp_bytes} bytes, {w.min_total}-{w.max_total} entries; "
            f"steady with cpu+memory >= {w.min_with_cpu_mem}, with usage_nano_cores >= "
            f"{w.min_with_rate} (of {r.containers}) in every response; client CPU "
            f"{w.client_cpu_s * 1e3 / w.calls:.2f} ms/call"
        )
    for k in ("stats", "mixed"):
        w = r.windows.get(k)
        if w is None or not w.calls:
            continue
        worst = sorted(zip(w.latencies, w.starts, strict=True), reverse=True)[:8]
        cells = ", ".join(
            f"{lat * 1e3:.0f} ms @{at:.2f}s" for lat, at in sorted(worst, key=lambda x: x[1])
        )
        print(f"{k}: slowest calls (latency @ start in the window): {cells}")
    for k in ("stats", "mixed"):
        w = r.windows.get(k)
        if w is None or not w.calls:
            continue
        by = attribute(w)
        order = ["none", "refresh", "create", "start", "stop", "remove"]
        cells = "; ".join(
            f"{label} n={Dist.of(by[label]).n} {Dist.of(by[label]).p50:.1f}/"
            f"{Dist.of(by[label]).p99:.1f}"
            for label in order
            if label in by
        )
        print(f"{k}: latency p50/p99 by what the call overlapped: {cells}")
    for k in ("churn", "mixed"):
        w = r.windows.get(k)
        if w is None or not w.churn_cycles:
            continue
        steps = "  ".join(
            f"{s} {Dist.of(v).p50:.1f}/{Dist.of(v).p95:.1f}" for s, v in w.churn_steps.items()
        )
        c = Dist.of(w.churn_cycles)
        print(f"churn cycle in {k}: p50 {c.p50:.1f} p95 {c.p95:.1f} ms ({steps}; p50/p95)")
    for e in r.errors:
        print(f"  ! {e}")


def print_cni(r: CNIResult) -> None:
    hp = "one hostPort per pod" if r.host_port else "no hostPorts"
    print(f"\n== part 2: pod network setup/teardown, {r.iterations} rounds ({hp}; ms) ==")
    head = f"{'':46}{'p50':>8}{'p95':>8}{'min':>8}{'max':>8}"
    print(head)
    print("-" * len(head))

    def row(label: str, xs: Sequence[float]) -> None:
        d = Dist.of(xs)
        print(f"{label:46}{d.p50:8.1f}{d.p95:8.1f}{d.min:8.1f}{d.max:8.1f}")

    def over(label: str, a: Sequence[float], b: Sequence[float]) -> None:
        x, y = Dist.of(a), Dist.of(b)
        print(f"{label:46}{x.p50 - y.p50:8.1f}{x.p95 - y.p95:8.1f}")

    s, lib, raw = r.server, r.library, r.raw
    row("cri-async RunPodSandbox", s.get("run_pod", []))
    row("cri-async RemovePodSandbox (stop + remove)", s.get("remove_pod", []))
    row("library CNI.setup (lo + bridge + portmap ADD)", lib.get("setup", []))
    row("library CNI.teardown (DEL x3)", lib.get("teardown", []))
    row("raw: pin net+ipc+uts (unshare, sh)", raw.get("pin", []))
    for k in RAW_ADD:
        row(f"raw: {k.replace(':', ' ')}", raw.get(k, []))
    row("raw: ADD total", r.raw_add())
    for k in RAW_DEL:
        row(f"raw: {k.replace(':', ' ')}", raw.get(k, []))
    row("raw: DEL total", r.raw_del())
    row("raw: unpin (3 umounts)", raw.get("unpin", []))
    row("raw floor of RunPodSandbox: pin + ADD", r.floor_run())
    row("raw floor of RemovePodSandbox: DEL + unpin", r.floor_remove())
    print(f"{'overhead (p50 - p50, p95 - p95)':46}{'p50':>8}{'p95':>8}")
    over("  RunPodSandbox - (pin + ADD)", s.get("run_pod", []), r.floor_run())
    over("  RemovePodSandbox - (DEL + unpin)", s.get("remove_pod", []), r.floor_remove())
    over("  library setup - raw ADD", lib.get("setup", []), r.raw_add())
    over("  library teardown - raw DEL", lib.get("teardown", []), r.raw_del())
    if r.cpu:
        print(
            f"server CPU per pod (run + remove): self {r.cpu['self']:.1f} ms, "
            f"reaped children {r.cpu['children']:.1f} ms"
        )
    for e in r.errors:
        print(f"  ! {e}")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="shorter windows, 10 CNI rounds")
    p.add_argument("--only", choices=("all", "stats", "cni"), default="all")
    p.add_argument("--pods", type=int, default=20, help="part 1 pods (20)")
    p.add_argument("--per-pod", type=int, default=5, help="containers per pod (5)")
    p.add_argument("--idle-s", type=float, help="idle window (5; quick 3)")
    p.add_argument("--stats-s", type=float, help="stats-only window (10; quick 5)")
    p.add_argument("--churn-s", type=float, help="churn-only window (10; quick 5)")
    p.add_argument("--mixed-s", type=float, help="stats + churn window (30; quick 10)")
    p.add_argument("--cni-iterations", type=int, help="part 2 rounds (40; quick 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed part 2 rounds first (2)")
    p.add_argument("--host-port", action="store_true", help="one hostPort per pod in part 2")
    p.add_argument("--json", type=Path, help="write samples and summary here")
    p.add_argument(
        "--run-root",
        type=Path,
        default=Path("/run/crs"),
        help="short dir for socket, bundles, pins (/run/crs; must be empty or absent)",
    )
    p.add_argument(
        "--tmp",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the state dir goes (default: $TMPDIR or /tmp)",
    )
    p.add_argument("--log-level", default="info", help="the server's log level (info)")
    p.add_argument("--keep-logs", type=Path, help="copy the server's log into this dir")
    p.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the server per phase")
    p.add_argument("--py-spy-bin", help="the py-spy binary (default: py-spy in PATH)")
    p.add_argument(
        "--py-spy-idle", action="store_true", help="also sample idle threads (wall-clock view)"
    )
    p.add_argument(
        "--stats-interval-ms",
        type=float,
        default=0.0,
        help="start a ListContainerStats call every N ms (0: back to back, the default)",
    )
    a = p.parse_args(argv)
    quick = a.quick
    for name, full, short in (
        ("idle_s", 5.0, 3.0),
        ("stats_s", 10.0, 5.0),
        ("churn_s", 10.0, 5.0),
        ("mixed_s", 30.0, 10.0),
        ("cni_iterations", 40, 10),
    ):
        if getattr(a, name) is None:
            setattr(a, name, short if quick else full)
    if a.pods < 1 or a.per_pod < 1 or a.cni_iterations < 1 or a.warmup < 0:
        p.error("--pods, --per-pod, --cni-iterations must be >= 1, --warmup >= 0")
    if len(os.fsencode(str(a.run_root))) > 40:
        p.error("--run-root must be short (conmon attach socket paths must fit 108 bytes)")
    return a


async def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root: real containers need mounts, namespaces and cgroups")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [p for p in PLUGINS if not os.access(os.path.join(PLUGIN_DIR, p), os.X_OK)]
    if missing:
        raise SystemExit(
            f"missing: {', '.join(missing)} (apt-get install runc conmon "
            "containernetworking-plugins docker-registry iptables)"
        )
    py_spy_bin = None
    if args.py_spy is not None:
        py_spy_bin = args.py_spy_bin or shutil.which("py-spy")
        if py_spy_bin is None:
            raise SystemExit("py-spy not found: pip install py-spy, or pass --py-spy-bin")
    opts = Options(
        run_root=args.run_root,
        tmp=args.tmp,
        python=sys.executable,
        log_level=args.log_level,
        pods=args.pods,
        per_pod=args.per_pod,
        idle_s=args.idle_s,
        stats_s=args.stats_s,
        churn_s=args.churn_s,
        mixed_s=args.mixed_s,
        cni_iterations=args.cni_iterations,
        warmup=args.warmup,
        host_port=args.host_port,
        keep_logs=args.keep_logs,
        py_spy=py_spy_bin,
        profile_dir=args.py_spy,
        profile_idle=args.py_spy_idle,
        stats_interval=args.stats_interval_ms / 1e3,
    )
    info = versions(opts.python)
    for k, v in info.items():
        print(f"{k + ':':<13}{v}")
    t_start = time.perf_counter()
    image = im.busybox_image(cmd=("sh",))
    with LocalRegistry() as reg:
        im.push(reg, IMAGE_REPO, image, tag="latest")
        ref = reg.ref(IMAGE_REPO, "latest")
        print(f"image {ref} ({image.image_id[:19]})")
        res = await run_all(opts, args.only, ref, image)
    info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["runtime_s"] = f"{time.perf_counter() - t_start:.0f}"

    if res.stats is not None:
        print_stats(res.stats)
    if res.cni is not None:
        print_cni(res.cni)
    for e in res.errors:
        print(f"! {e}")
    print(
        f"\nloadavg at the start {info['loadavg']}, at the end {info['loadavg_end']}; "
        f"{info['runtime_s']} s in all"
    )
    if opts.profile_dir is not None:
        for f in sorted(opts.profile_dir.glob("*.txt")):
            print(f"\n== py-spy {f} ==")
            print("\n".join(profile_summary(f)))
    if args.json is not None:
        doc: dict[str, Any] = {
            "versions": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "errors": res.errors,
        }
        if res.stats is not None:
            doc["stats"] = {
                "summary": res.stats.summary(),
                "errors": res.stats.errors,
                "samples_s": {
                    "version_rpc": res.stats.version_rpc,
                    **{
                        f"{k}_latency": w.latencies
                        for k, w in res.stats.windows.items()
                        if w.latencies
                    },
                    **{
                        f"{k}_call_start_offsets": w.starts
                        for k, w in res.stats.windows.items()
                        if w.starts
                    },
                    **{
                        f"{k}_churn_cycle": w.churn_cycles
                        for k, w in res.stats.windows.items()
                        if w.churn_cycles
                    },
                },
            }
        if res.cni is not None:
            doc["cni"] = {
                "summary": res.cni.summary(),
                "errors": res.cni.errors,
                "samples_s": {
                    "cri_async": res.cni.server,
                    "library": res.cni.library,
                    "raw": res.cni.raw,
                },
            }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    failed = res.errors or (res.stats and res.stats.errors) or (res.cni and res.cni.errors)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
