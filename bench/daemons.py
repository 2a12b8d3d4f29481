"""The two CRI daemons the suite compares, each isolated, and everything they leave behind.

* ``Net``: a bridge and a /24 of the bench's own, created before the daemon starts (with the
  gateway address, so that the bridge plugin need not be ``isGateway``, which would flip the
  host-wide ``ip_forward``), and one conflist (bridge + host-local + portmap, no masquerade)
  in a conf dir of its own. Both daemons get the same conflist shape on different bridges;
* ``write_hosts``: a containerd-style ``hosts.toml`` tree sending the mirrored registry names
  to the local registry over plain HTTP; both daemons read the same tree;
* ``cri_async_config`` / ``containerd_config``: equivalent configurations (runc only, the
  overlay snapshotter, state under a temp dir, socket of its own; containerd's CRI plugin
  with ``restrict_oom_score_adj``, since this kernel refuses negative scores, and its pod
  network namespaces under its state dir);
* ``Daemon``: the process (own session, so a Ctrl-C on the terminal reaches the bench, not
  the daemons, and the bench cleans up in order), ``wait_ready`` (``Status`` with
  RuntimeReady and NetworkReady), kill -9 and restart, the monitors (conmons or shims);
* ``sweep``: after a daemon stopped, whatever is still there is reported and removed:
  processes (monitors, container processes in the bench's cgroup tree), runc containers,
  mounts, cgroups, and the network (veths, bridge, iptables rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchhost import cgroup_dirs, mounts_under, pdeathsig, processes_mentioning, rmdir_cgroup_tree

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient
from cri_async.network.natsweep import nat_cleanup

CRI_ASYNC = "cri-async"
CONTAINERD = "containerd"
RUNTIMES = (CRI_ASYNC, CONTAINERD)
PLUGIN_DIR = "/usr/lib/cni"
SHIM = "containerd-shim-runc-v2"
MIRRORED = ("registry.k8s.io",)
PAUSE_REF = "registry.k8s.io/pause:3.10"
START_TIMEOUT = 60.0
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts every shim's socket here
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def cpuacct_s(rel: str) -> float:
    """CPU seconds used by every process that ever ran in cgroup ``rel`` or below."""
    return int((CPUACCT / rel / "cpuacct.usage").read_text()) / 1e9


def sh(*argv: str, check: bool = True) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout


# -- network -----------------------------------------------------------------------------------


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` unused 10.66.N.0/24 (nothing routed or addressed in them on this host)."""
    used = sh("ip", "-4", "route", "show", "table", "all") + sh("ip", "-4", "-o", "addr")
    free = [n for n in range(1, 255) if f"10.66.{n}." not in used]
    if len(free) < count:
        raise RuntimeError("no free 10.66.N.0/24")
    picks = sorted(secrets.SystemRandom().sample(free, count))
    return [ipaddress.IPv4Network(f"10.66.{n}.0/24") for n in picks]


@dataclass
class Net:
    """One pod network: bridge ``name`` on ``subnet``, its conflist in ``dir/net.d``."""

    name: str  # also the bridge's name (<= 15 chars)
    subnet: ipaddress.IPv4Network
    dir: Path
    doc: dict[str, object] = field(default_factory=dict)  # the conflist, once created

    @property
    def conf_dir(self) -> Path:
        return self.dir / "net.d"

    @property
    def gateway(self) -> str:
        return str(self.subnet[1])

    def create(self) -> None:
        ipam = self.dir / "ipam"
        doc = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.name,
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet), "gateway": self.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway}],
                        "dataDir": str(ipam),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        }
        self.doc = doc
        self.conf_dir.mkdir(parents=True)
        (self.conf_dir / "10-bench.conflist").write_text(json.dumps(doc, indent=1) + "\n")
        sh("ip", "link", "add", self.name, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.name)
        sh("ip", "link", "set", self.name, "up")

    def veths(self) -> list[str]:
        out = sh("ip", "-o", "link", "show", "master", self.name, check=False)
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ln.strip()]

    def rules(self) -> list[str]:
        """iptables rules (nat and filter) naming this network or its subnet."""
        prefix = str(self.subnet.network_address).rsplit(".", 1)[0] + "."
        out = []
        for table in ("nat", "filter"):
            for line in sh("iptables-save", "-t", table, check=False).splitlines():
                if prefix in line or f'"{self.name}"' in line:
                    out.append(f"{table}: {line}")
        return out

    def sweep(self) -> list[str]:
        """Report and remove what is left of this network; the bridge always goes."""
        problems = []
        rules = self.rules()
        if rules:
            problems.append(f"iptables rules of {self.name} left: {rules}")
            for argv in nat_cleanup(sh("iptables-save", "-t", "nat"), f'name: "{self.name}"'):
                sh("iptables", "-w", "-t", "nat", *argv, check=False)
        veths = self.veths()
        if veths:
            problems.append(f"veths left on {self.name}: {veths}")
            for v in veths:
                sh("ip", "link", "del", v, check=False)
        sh("ip", "link", "del", self.name, check=False)
        if self.name in sh("ip", "-o", "link"):
            problems.append(f"bridge {self.name} could not be deleted")
        return problems


def write_hosts(certs_d: Path, registry_host: str) -> None:
    """containerd's hosts.toml: each mirrored name and the registry's own address resolve to
    the local registry over plain HTTP (never to the real upstream)."""
    url = f"http://{registry_host}"
    for host in (*MIRRORED, registry_host):
        d = certs_d / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
        )


# -- configurations ---------------------------------------------------------------------------


def cri_async_config(
    workdir: Path,
    run_root: Path,
    certs_d: Path,
    net: Net | None,
    *,
    backend: str = "runc",
    images: str = "registry",
    log_level: str = "info",
) -> Path:
    """Our config: one default handler on ``backend`` under conmon, the overlay snapshots
    under the state dir, the bench's CNI network (none: no conf dir, so NetworkReady false)."""
    cfg = workdir / "config.toml"
    conf_dirs = [str(net.conf_dir)] if net else [str(workdir / "no-cni")]
    cfg.write_text(
        f'[server]\nsocket = "{run_root / "cri.sock"}"\n'
        f'[log]\nlevel = "{log_level}"\n'
        f'[state]\nroot = "{workdir / "state"}"\nrun_root = "{run_root}"\n'
        f'[images]\nbackend = "{images}"\n'
        f'[registry]\nconfig_path = "{certs_d}"\n'
        f'[runtimes.""]\nbackend = "{backend}"\n'
        f"[network]\nconf_dirs = {json.dumps(conf_dirs)}\nbin_dirs = [{json.dumps(PLUGIN_DIR)}]\n"
    )
    return cfg


def containerd_config(
    workdir: Path, certs_d: Path, net: Net | None, *, log_level: str = "info"
) -> Path:
    """containerd 1.6 with its CRI plugin: runc through containerd-shim-runc-v2, overlayfs,
    everything under ``workdir``; unused snapshotters and tracing off."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    disabled = [
        f"io.containerd.snapshotter.v1.{s}" for s in ("btrfs", "zfs", "aufs", "devmapper")
    ] + ["io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
    state = workdir / "state"
    conf_dir = net.conf_dir if net else workdir / "no-cni"
    cfg = workdir / "config.toml"
    cfg.write_text(
        "version = 2\n"
        f'root = "{workdir / "root"}"\nstate = "{state}"\noom_score = 0\n'
        f"disabled_plugins = {json.dumps(disabled)}\n"
        f'[grpc]\n  address = "{workdir / "containerd.sock"}"\n'
        f'[ttrpc]\n  address = "{workdir / "containerd.sock.ttrpc"}"\n'
        f'[debug]\n  address = ""\n  level = "{log_level}"\n'
        '[metrics]\n  address = ""\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{workdir / "opt"}"\n'
        f"[{cri}]\n"
        f'  sandbox_image = "{PAUSE_REF}"\n'
        '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n'
        "  restrict_oom_score_adj = true\n"
        "  netns_mounts_under_state_dir = true\n"
        f'[{cri}.containerd]\n  snapshotter = "overlayfs"\n  default_runtime_name = "runc"\n'
        f'[{cri}.containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
        f"[{cri}.containerd.runtimes.runc.options]\n"
        f'  BinaryName = "runc"\n  Root = "{state / "runc"}"\n  SystemdCgroup = false\n'
        f'[{cri}.cni]\n  bin_dir = "{PLUGIN_DIR}"\n  conf_dir = "{conf_dir}"\n'
        "  max_conf_num = 1\n"
        f'[{cri}.registry]\n  config_path = "{certs_d}"\n'
    )
    return cfg


# -- the process ------------------------------------------------------------------------------


@dataclass
class Daemon:
    kind: str  # CRI_ASYNC | CONTAINERD
    argv: list[str]
    socket: Path
    workdir: Path
    run_root: Path  # where its sockets, bundles and mounts live (== workdir for containerd)
    cpu_cgroup: str = ""  # cpuacct cgroup the process starts in (its children inherit it)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exited: list[int] = field(default_factory=list)  # pids of earlier processes (restarts)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def logs(self, tail: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        with self.log.open("ab") as f:
            f.write(f"==== start {self.starts} ====\n".encode())
            f.flush()
            # Own session: a terminal's Ctrl-C reaches the bench, which then cleans up in
            # order; the daemon must still answer to remove its pods.
            procs = None
            if self.cpu_cgroup:
                (CPUACCT / self.cpu_cgroup).mkdir(parents=True, exist_ok=True)
                procs = str(CPUACCT / self.cpu_cgroup / "cgroup.procs")
            hook = pdeathsig()

            def preexec() -> None:
                if hook is not None:
                    hook()
                if procs is not None:  # before exec: every child is counted from the start
                    with open(procs, "w") as cg:
                        cg.write(str(os.getpid()))

            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )

    def kill9(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(30)
            self.exited.append(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def monitors(self) -> list[int]:
        """Live per-container monitors: conmons (cri-async) or shims (containerd)."""
        if self.kind == CRI_ASYNC:
            found = processes_mentioning(f"{self.run_root}/")
            return [p for p, cmd in found if cmd.split(" ", 1)[0].endswith("conmon")]
        return [p for p, cmd in processes_mentioning(f"-address {self.socket} ") if SHIM in cmd]


def new_daemon(
    kind: str, workdir: Path, run_root: Path, cfg: Path, python: str, cpu_cgroup: str = ""
) -> Daemon:
    """``cpu_cgroup``: the cpuacct cgroup of the daemon and its helpers (runtime commands,
    shims, conmons), to account the CPU of the whole runtime stack."""
    if kind == CRI_ASYNC:
        argv = [python, "-m", "cri_async.cli", "serve", "--config", str(cfg)]
        return Daemon(kind, argv, run_root / "cri.sock", workdir, run_root, cpu_cgroup)
    argv = ["containerd", "--config", str(cfg)]
    return Daemon(kind, argv, workdir / "containerd.sock", workdir, workdir, cpu_cgroup)


async def status_ready(sock: Path, network: bool = True) -> bool:
    """One Status call: True when RuntimeReady (and NetworkReady, if asked) are true."""
    cli = CRIClient(sock)
    try:
        st = await asyncio.wait_for(cli.runtime.Status(pb.StatusRequest()), 2)
    except Exception:  # not serving yet
        return False
    finally:
        cli.close()
    conds = {c.type: c.status for c in st.status.conditions}
    return bool(conds.get("RuntimeReady")) and (not network or bool(conds.get("NetworkReady")))


async def wait_ready(d: Daemon, *, network: bool = True, interval: float = 0.005) -> float:
    """Poll ``Status`` until the daemon answers ready; seconds since called."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < START_TIMEOUT:
        if not d.alive():
            code = d.proc.returncode if d.proc else None
            raise RuntimeError(f"{d.kind} exited with {code}:\n{d.logs()}")
        if d.socket.exists() and await status_ready(d.socket, network):
            return time.perf_counter() - t0
        await asyncio.sleep(interval)
    raise RuntimeError(f"{d.kind} not ready after {START_TIMEOUT}s:\n{d.logs()}")


# -- what is left -----------------------------------------------------------------------------


def cgroup_pids(rel: str) -> set[int]:
    """Every process in ``rel`` or below, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(rel):
        for d, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                pids |= {int(x) for x in (Path(d) / "cgroup.procs").read_text().split()}
    return pids


def runc_roots(*paths: Path) -> list[Path]:
    """runc ``--root`` dirs below ``paths``: dirs with a child holding ``state.json``."""
    roots = []
    for top in paths:
        for d, dirs, _ in os.walk(top):
            if any((Path(d) / c / "state.json").is_file() for c in dirs):
                roots.append(Path(d))
    return roots


def kill_all(pids: set[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def shim_sockets() -> set[str]:
    try:
        return set(os.listdir(SHIM_SOCKETS))
    except OSError:
        return set()


def remove_dead_shim_sockets(before: set[str]) -> list[str]:
    """Shim sockets that appeared during the run and nobody listens on any more (left by a
    shim that was killed); other containerds' live sockets are never touched."""
    gone = []
    for name in shim_sockets() - before:
        path = SHIM_SOCKETS / name
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                continue
            except OSError:
                pass
        with contextlib.suppress(OSError):
            path.unlink()
            gone.append(name)
    return gone


def sweep(d: Daemon, cgroup: str, dirs: list[Path]) -> list[str]:
    """After the daemon stopped: report and remove its monitors, the container processes in
    ``cgroup``, runc containers, mounts below ``dirs`` and the cgroup tree."""
    problems = []
    monitors = set(d.monitors())
    if monitors:
        problems.append(f"{d.kind}: monitors left: {sorted(monitors)}")
    procs = cgroup_pids(cgroup)
    if procs:
        problems.append(f"{d.kind}: processes left in /{cgroup}: {sorted(procs)}")
    kill_all(monitors | procs)
    for root in runc_roots(*dirs):
        for cid in sh("runc", f"--root={root}", "list", "-q", check=False).split():
            problems.append(f"{d.kind}: runc container left: {cid}")
            sh("runc", f"--root={root}", "delete", "--force", cid, check=False)
    left = mounts_under(*dirs)
    # cri-async keeps its namespace-pin dir as a private bind mount of itself on purpose.
    expected = {str(d.run_root / "ns")}
    if [m for m in left if m not in expected]:
        problems.append(f"{d.kind}: mounts left: {left}")
    for mp in sorted(left, key=len, reverse=True):
        with contextlib.suppress(OSError):
            linux.umount(mp)
    # Runtimes never remove the pods' parent cgroups (kubelet owns them): not a leftover,
    # unless one cannot be removed because a process is still in it.
    problems += [f"{d.kind}: cgroup not removable: {e}" for e in rmdir_cgroup_tree(cgroup)]
    return problems


# Orphans the bench reaps as a child subreaper: shims (re-parented to us once their
# `start` process exits), conmons and containers whose daemon was killed. Never the
# processes it waits for itself (runc commands of the floor, the daemons, the registry).
ORPHANS = ("containerd-shim", "conmon", "sleep", "pause", "catatonit", "true", "sh")


def reap_orphans() -> int:
    """Reap exited children of ours that are orphans of the kinds above; how many."""
    n = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, kids):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            if stat[stat.rindex(")") + 2] == "Z" and comm in ORPHANS:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    n += 1
    return n
