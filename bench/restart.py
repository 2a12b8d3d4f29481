"""Restart after kill -9 with running pods: how long until the socket answers, and until
Status says RuntimeReady and NetworkReady.

What it measures. A busybox image is pushed to a local CNCF registry and a bridge network
of its own is written as a conflist (``stats_network.BenchNet``: bridge + host-local +
portmap on a free ``10.99.N.0/24``). A ``cri-async serve`` process (runc under conmon,
registry images, that network) is started, the image pulled, and ``--pods`` (30) pods are
run, each with one running container (``sleep``). Then ``--restarts`` (10) times:

* the server is killed with SIGKILL (no graceful shutdown; the socket file stays), and a
  new ``cri-async serve`` is started on the same config at once (as systemd's
  ``Restart=always`` would, without its delay); from just before the SIGKILL, the client
  polls (every ``--poll-ms``, 2 ms) with ``Version`` (**socket**: the first answer) and
  then ``Status`` (**ready**: the first answer with both conditions true) over fresh
  connections, as kubelet would on reconnect;
* the first ``ListContainers`` after ready must show every container running, and every
  pod ready (a restart that loses something fails the run);
* the server's own log lines "state loaded" and "serving on" are timed too (their
  timestamps, against the spawn) to tell start-up phases apart; the new server's
  modules' bytecode is cached, as an installed package's is (``PYTHONPYCACHEPREFIX`` under
  the work dir, not in the checkout).

Reported: each restart's figures, their min/median/max, in a table and as JSON
(``--json``, default ``bench/results/restart-<date>.json``). Before the end every pod is
removed and the host is checked for what is left (processes, mounts, cgroups, veths,
leases): the run fails if anything is.

Rerun (from the repository root, as root; runc, conmon, CNI plugins and docker-registry
from Debian; about 40 s)::

    .venv/bin/python bench/restart.py
    .venv/bin/python bench/restart.py --pods 100 --restarts 20 --json /tmp/restart.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from benchhost import cgroup_dirs, mounts_under, pdeathsig, processes_mentioning  # noqa: E402
from stats_network import PLUGIN_DIR, BenchNet  # noqa: E402

from cri_async import linux  # noqa: E402
from cri_async.api.runtime.v1 import api_pb2 as pb  # noqa: E402
from cri_async.client import CRIClient, container_config, pod_config  # noqa: E402
from tests.support import images as im  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

START_TIMEOUT = 30.0
SERVER_CGROUP = "cri-async"  # cri_async.pods.host.DEFAULT_CGROUP_PARENT
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[.,]\d+)")


@dataclass
class Restart:
    socket_s: float
    ready_s: float
    serving_log_s: float | None
    loaded_log_s: float | None
    running_after: int


@dataclass
class Result:
    pods: int
    restarts: list[Restart] = field(default_factory=list)
    host: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Serve:
    """``cri-async serve`` processes on one config, one at a time."""

    def __init__(self, python: str, workdir: Path, run_root: Path, net: BenchNet) -> None:
        self.python = python
        self.workdir = workdir
        self.socket = run_root / "cri.sock"
        self.config = workdir / "config.toml"
        self.config.write_text(
            f'[server]\nsocket = "{self.socket}"\n'
            '[log]\nlevel = "info"\n'
            f'[state]\nroot = "{workdir / "state"}"\nrun_root = "{run_root}"\n'
            'sync = "normal"\n'
            '[images]\nbackend = "registry"\n'
            '[runtimes.""]\nbackend = "runc"\n'
            f'[network]\nconf_dirs = ["{net.conf_dir}"]\nbin_dirs = ["{PLUGIN_DIR}"]\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path = workdir / "server-0.log"
        self.started_wall = 0.0
        self.count = 0

    def start(self) -> float:
        """Start a server; the monotonic time just before it was spawned."""
        self.log = self.workdir / f"server-{self.count}.log"
        self.count += 1
        f = self.log.open("wb")
        t0 = time.monotonic()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            [self.python, "-m", "cri_async.cli", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env(),
            preexec_fn=pdeathsig(),
        )
        f.close()
        return t0

    def env(self) -> dict[str, str]:
        """As an installed server runs: with its modules' bytecode cached (here under the
        work dir, not in the checkout)."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(self.workdir / "pycache")
        return env

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")

    def logged_at(self, needle: str) -> float | None:
        """Seconds from spawn to the first log line containing ``needle``."""
        for line in self.log.read_text(errors="replace").splitlines():
            if needle in line:
                m = LOG_TIME.match(line)
                if m is None:
                    return None
                stamp = m.group(1).replace(",", ".").replace(" ", "T")
                when = datetime.fromisoformat(stamp)
                if when.tzinfo is None:
                    when = when.astimezone()
                return when.timestamp() - self.started_wall
        return None


async def first_answer(serve: Serve, poll: float) -> float:
    """Poll Version over fresh connections until one answers; monotonic time of it."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        serve.check_alive()
        if serve.socket.exists():
            client = CRIClient(serve.socket)
            try:
                await asyncio.wait_for(client.version(), 2)
                return time.monotonic()
            except (OSError, ConnectionError, TimeoutError):
                pass
            finally:
                client.close()
        await asyncio.sleep(poll)
    raise RuntimeError(f"no Version answer within {START_TIMEOUT}s")


async def first_ready(serve: Serve, poll: float) -> float:
    """Poll Status until both conditions are true; monotonic time of that answer."""
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    client = CRIClient(serve.socket)
    try:
        while time.monotonic() < deadline:
            serve.check_alive()
            st = await asyncio.wait_for(client.runtime.Status(pb.StatusRequest()), 5)
            if st.status.conditions and all(c.status for c in st.status.conditions):
                return time.monotonic()
            last = list(st.status.conditions)
            await asyncio.sleep(poll)
    finally:
        client.close()
    raise RuntimeError(f"Status not ready within {START_TIMEOUT}s: {last}")


async def populate(serve: Serve, ref: str, pods: int, logs: Path) -> list[str]:
    client = CRIClient(serve.socket)
    try:
        await client.pull(ref)

        async def one(i: int) -> str:
            cfg = pod_config(f"r{i}", "bench-restart", log_directory=str(logs / f"r{i}"))
            pod = await client.run_pod(cfg)
            cid = await client.create_container(
                pod, container_config("sleep", ref, command=["sleep", "100000"]), cfg
            )
            await client.start_container(cid)
            return pod

        out = []
        for start in range(0, pods, 5):  # a few at a time: 2 cores
            out += await asyncio.gather(*(one(i) for i in range(start, min(start + 5, pods))))
        return out
    finally:
        client.close()


async def check_state(serve: Serve, pods: int) -> int:
    client = CRIClient(serve.socket)
    try:
        ctrs = (await client.runtime.ListContainers(pb.ListContainersRequest())).containers
        sbs = (await client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    finally:
        client.close()
    running = sum(1 for c in ctrs if c.state == pb.CONTAINER_RUNNING)
    ready = sum(1 for s in sbs if s.state == pb.SANDBOX_READY)
    if running != pods or ready != pods:
        raise RuntimeError(f"after restart: {running}/{pods} running, {ready}/{pods} pods ready")
    return running


async def remove_all(serve: Serve) -> None:
    client = CRIClient(serve.socket)
    try:
        sbs = (await client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
        for s in sbs:
            await client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id))
            await client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id))
    finally:
        client.close()


def leftovers(run_root: Path, workdir: Path, net: BenchNet, pod_ids: Sequence[str]) -> list[str]:
    problems = []
    for pid, cmd in processes_mentioning(str(run_root) + "/"):
        problems.append(f"process left: {pid} {cmd[:120]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = [m for m in mounts_under(run_root, workdir) if m != str(run_root / "ns")]
    problems += [f"mount left: {m}" for m in left]
    for m in sorted(mounts_under(run_root, workdir), key=len, reverse=True):
        linux.umount(m)
    problems += [
        f"cgroup left: {SERVER_CGROUP}/pod-{sid[:16]}"
        for sid in pod_ids
        if cgroup_dirs(f"{SERVER_CGROUP}/pod-{sid[:16]}")
    ]
    problems += net.cleanup()
    return problems


def host_facts(python: str) -> dict[str, str]:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    return {
        "commit": out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "python": out(python, "--version"),
        "runc": out("runc", "--version").splitlines()[0] if shutil.which("runc") else "-",
        "conmon": out("conmon", "--version").splitlines()[0] if shutil.which("conmon") else "-",
        "kernel": platform.release(),
        "nproc": str(os.cpu_count()),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def spread(xs: Sequence[float]) -> str:
    ms = [x * 1e3 for x in xs]
    return f"{min(ms):7.0f} {statistics.median(ms):7.0f} {max(ms):7.0f}"


def report(res: Result) -> None:
    print(f"\n{res.pods} running pods, {len(res.restarts)} restarts after kill -9 (ms)")
    print(f"{'#':>3} {'socket':>8} {'ready':>8} {'log: loaded':>12} {'log: serving':>13}")
    for i, r in enumerate(res.restarts):

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1e3:.0f}"

        print(
            f"{i:>3} {r.socket_s * 1e3:8.0f} {r.ready_s * 1e3:8.0f} "
            f"{ms(r.loaded_log_s):>12} {ms(r.serving_log_s):>13}"
        )
    print(f"{'':>3} {'min':>7} {'median':>7} {'max':>7}")
    print(f"socket {spread([r.socket_s for r in res.restarts])}")
    print(f"ready  {spread([r.ready_s for r in res.restarts])}")


async def run(opts: argparse.Namespace) -> Result:
    res = Result(opts.pods, host=host_facts(opts.python))
    run_root = Path(opts.run_root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-restart-", dir=opts.tmp))
    net = BenchNet(workdir)
    serve = Serve(opts.python, workdir, run_root, net)
    pod_ids: list[str] = []
    poll = opts.poll_ms / 1e3
    try:
        with LocalRegistry() as reg:
            im.push(reg, "bench/busybox", im.busybox_image(cmd=("sh",)))
            ref = reg.ref("bench/busybox")
            serve.start()
            await first_answer(serve, 0.05)
            await first_ready(serve, 0.05)
            pod_ids = await populate(serve, ref, opts.pods, workdir / "logs")
            print(f"{opts.pods} pods running; restarting {opts.restarts} times")
            for _ in range(opts.restarts):
                t0 = time.monotonic()
                serve.kill9()
                serve.start()
                t_sock = await first_answer(serve, poll)
                t_ready = await first_ready(serve, poll)
                running = await check_state(serve, opts.pods)
                res.restarts.append(
                    Restart(
                        socket_s=t_sock - t0,
                        ready_s=t_ready - t0,
                        serving_log_s=serve.logged_at("serving on"),
                        loaded_log_s=serve.logged_at("state loaded"),
                        running_after=running,
                    )
                )
                print(f"  socket {(t_sock - t0) * 1e3:.0f} ms, ready {(t_ready - t0) * 1e3:.0f} ms")
            await remove_all(serve)
    finally:
        serve.stop()
        res.problems = leftovers(run_root, workdir, net, pod_ids)
        with contextlib.suppress(OSError):
            linux.umount(str(run_root / "ns"))
        shutil.rmtree(run_root, ignore_errors=True)
        if opts.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--poll-ms", type=float, default=2.0)
    ap.add_argument("--run-root", default="/run/crbr")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", default=None)
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (runc, mounts, network)")
    if os.path.isdir(opts.run_root) and os.listdir(opts.run_root):
        raise SystemExit(f"{opts.run_root} is not empty: another run? remove it first")
    res = asyncio.run(run(opts))
    report(res)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    out = opts.json or ROOT / "bench" / "results" / f"restart-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(res), indent=1) + "\n")
    print(f"results: {out}")
    for p in res.problems:
        print(f"LEFT BEHIND: {p}")
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main())
