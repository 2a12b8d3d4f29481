"""Cold pull + unpack from a local registry: cri-async against containerd's CRI plugin.

What it measures. Two images (``pullimages.py``: ``a``, 20 layers x 10 MiB; ``b``, 10,000
small files) are built once in memory and pushed to one local CNCF registry
(``docker-registry``, see ``tests/support/registry.py``).

Then, ``--runs`` times, and interleaved so drift hits every row alike, each runtime pulls each
image into a cold store: a fresh server process with an empty state directory per pull, so
nothing is cached and ``VmHWM`` (a lifetime peak) belongs to that one pull. Per pull:

* **wall**: the client-observed time of the ``PullImage`` RPC (the same grpclib ``CRIClient``
  against both runtimes; the RPC returns once every layer is unpacked);
* **CPU**: the server's ``utime + stime`` (+ reaped children, e.g. containerd's ``unpigz``)
  from ``/proc/PID/stat``, read just before and just after the RPC;
* **peak RSS**: ``VmHWM`` of the server process after the pull (includes its idle RSS, which
  is reported separately in the JSON as ``rss_idle_mib``);
* **MiB/s**: compressed layer bytes / median wall.

Each pull's line also shows minor page faults, context switches (summed over the live
threads) and the thread count: diagnostics, in the JSON too. After each pull (untimed) the
image id is checked against the config digest and the regular files under the runtime's
snapshot directory are counted: a row only counts if the image was really unpacked.

Both daemons are configured as in the suite (``daemons.py``), without a pod network:
containerd (Debian's 1.6) with its CRI plugin on the overlayfs snapshotter (the same kind of
unpack work: one directory per layer), cri-async on its fake runtime backend (pulls need no
OCI runtime); both read a ``hosts.toml`` that sends the local registry over plain HTTP and
run with their defaults
otherwise (3 concurrent layer downloads each; both fsync downloaded blobs, neither fsyncs
unpacked files). Without a ``containerd`` binary, or with ``--no-containerd``, its rows say
"not available" and no ratio is printed.

Rerun (from the repository root, as root so that unpack can chown and containerd can start;
about 45 s on 2 cores with the defaults; the cold stores, ~2.2 GiB with the defaults, are
removed at the end)::

    .venv/bin/python bench/pull.py
    .venv/bin/python bench/pull.py --runs 5 --only b --json /tmp/pull.json
    .venv/bin/python bench/pull.py --tmp /dev/shm     # cold stores on tmpfs: no disk at all
    # where does cri-async's time go (py-spy from PyPI, e.g. in its own venv):
    PATH=/opt/py-spy/bin:$PATH .venv/bin/python bench/pull.py --no-containerd --py-spy /tmp/prof

Caveats:

* the registry is on loopback and its blobs are in the page cache after the first pull, so
  this measures the runtimes' own work (HTTP client, hashing, inflate, tar, file creation),
  not a network;
* writes go to the page cache of the temp dir's filesystem (``--tmp``, default ``$TMPDIR``);
  only the fsyncs each runtime makes itself are waited for, and dirty pages left behind may be
  written back during a later pull. Numbers on a shared VM move by +-20 %; compare within
  one run and rerun before quoting;
* file creation depends on what the filesystem went through just before. On ext4 *without a
  journal* (as on the project's VMs), allocating an inode skips every inode freed in the last
  ~30 s, reading each one: creating 10,000 files right after deleting 10,000 took 5-10x the
  system time. So cold stores are deleted only at the end, and a run started within ~30 s of
  a big deletion (the previous run's cleanup, other work on the machine) shows it as a slow
  first pull of image b: look at ``min``, rerun, or use ``--tmp /dev/shm``;
* containerd's CPU includes its own start-up work only if it is still running when the RPC
  starts; the readiness wait (``Version`` answered) comes first for both runtimes;
* peak RSS is the server process only: children (``unpigz``, if installed) are not in it;
* ``--py-spy`` samples at 200 Hz with ptrace stops, so profiled timings are slower.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import daemons as dm  # noqa: E402
from benchhost import cmd_version, mounts_under  # noqa: E402
from daemons import CONTAINERD, CRI_ASYNC  # noqa: E402
from profiling import find_py_spy, py_spy  # noqa: E402
from pullimages import MIB, BenchImage, build_images  # noqa: E402

from cri_async import linux  # noqa: E402
from cri_async.client import CRIClient  # noqa: E402
from tests.support import images as im  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PULL_TIMEOUT = 600.0


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Counters of one process (all its threads, plus reaped children for CPU and faults)."""

    user_s: float
    sys_s: float
    minor_faults: int
    ctx_switches: int  # summed over the live threads: diagnostic only

    def __sub__(self, o: Usage) -> Usage:
        return Usage(
            self.user_s - o.user_s,
            self.sys_s - o.sys_s,
            self.minor_faults - o.minor_faults,
            self.ctx_switches - o.ctx_switches,
        )


def proc_usage(pid: int) -> Usage:
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2 :].split()  # [0] is field 3 of proc(5), "state"
    # proc(5) fields: minflt=10, cminflt=12, utime=14, stime=15, cutime=16, cstime=17
    ut, st, cut, cst = (int(x) for x in f[11:15])
    ctx = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    ctx += int(line.split()[1])
    return Usage((ut + cut) / CLK_TCK, (st + cst) / CLK_TCK, int(f[7]) + int(f[9]), ctx)


def proc_status_int(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def remove_tree(path: Path) -> None:
    """rmtree, after detaching anything still mounted below ``path`` (never crosses one)."""
    for mp in sorted(mounts_under(path), key=len, reverse=True):
        linux.umount(mp)
    if left := mounts_under(path):
        print(f"warning: not removing {path}: still mounted: {left}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Server:
    daemon: dm.Daemon
    snapshots: Path  # where the unpacked layers go (files are counted there)

    @property
    def runtime(self) -> str:
        return self.daemon.kind


def start(runtime: str, workdir: Path, python: str, registry_host: str) -> Server:
    """A fresh daemon on an empty store, configured as the suite's (``daemons.py``); no pod
    network. cri-async runs the fake runtime backend: pulls need no OCI runtime."""
    certs_d = workdir / "certs.d"
    dm.write_hosts(certs_d, registry_host)
    run = workdir / "run"
    if runtime == CRI_ASYNC:
        cfg = dm.cri_async_config(workdir, run, certs_d, None, backend="fake", log_level="warning")
        snaps = workdir / "state" / "snapshots"
    else:
        cfg = dm.containerd_config(workdir, certs_d, None, log_level="warn")
        snaps = workdir / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    d = dm.new_daemon(runtime, workdir, run, cfg, python)
    d.spawn()
    return Server(d, snaps)


# -- measurement -----------------------------------------------------------------------------


@dataclass
class Sample:
    image: str
    runtime: str
    run: int
    wall_s: float
    user_s: float
    sys_s: float
    rss_idle_mib: float
    rss_peak_mib: float
    files: int
    bytes: int
    minor_faults: int
    ctx_switches: int
    threads: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def count_files(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                size += st.st_size
    return files, size


async def pull_once(
    server: Server, image: BenchImage, ref: str, run: int, env: Env | None = None
) -> Sample:
    await dm.wait_ready(server.daemon, network=False, interval=0.05)
    pid = server.daemon.pid
    rss_idle = proc_status_int(pid, "VmRSS") / 1024
    client = CRIClient(server.daemon.socket)
    profile = None
    if env is not None and env.profile_dir is not None and server.runtime == CRI_ASYNC:
        env.profile_dir.mkdir(parents=True, exist_ok=True)
        profile = env.profile_dir / f"{server.runtime}-{image.key}-run{run + 1}.txt"
    try:
        with py_spy(env.py_spy if env else None, pid, profile, idle=False, rate=200):
            before = proc_usage(pid)
            t0 = time.perf_counter()
            image_id = await asyncio.wait_for(client.pull(ref), PULL_TIMEOUT)
            wall = time.perf_counter() - t0
            used = proc_usage(pid) - before
    finally:
        client.close()
    peak = proc_status_int(pid, "VmHWM") / 1024
    threads = proc_status_int(pid, "Threads")
    if image_id != image.built.image_id:
        raise RuntimeError(f"{server.runtime}: pulled {image_id}, want {image.built.image_id}")
    files, size = count_files(server.snapshots)
    if files != image.files:
        raise RuntimeError(
            f"{server.runtime}: {files} files under {server.snapshots}, want {image.files}"
        )
    return Sample(
        image.key,
        server.runtime,
        run,
        wall,
        used.user_s,
        used.sys_s,
        rss_idle,
        peak,
        files,
        size,
        used.minor_faults,
        used.ctx_switches,
        threads,
    )


@dataclass
class Env:
    python: str
    containerd: str | None
    tmp: Path
    keep_logs: Path | None
    profile_dir: Path | None = None
    py_spy: str | None = None
    workdirs: list[Path] = field(default_factory=list)


async def measure(
    env: Env, runtime: str, image: BenchImage, reg: LocalRegistry, run: int
) -> Sample:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-pull-{runtime}-", dir=env.tmp))
    server: Server | None = None
    try:
        server = start(runtime, workdir, env.python, reg.host)
        try:
            return await pull_once(server, image, reg.ref(image.repo), run, env)
        except BaseException:
            print(f"--- {runtime} log (tail) ---\n{server.daemon.logs()}", file=sys.stderr)
            raise
    finally:
        if server is not None:
            server.daemon.stop()
            if env.keep_logs is not None:
                env.keep_logs.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    dest = env.keep_logs / f"{runtime}-{image.key}-{run}.log"
                    shutil.copy(server.daemon.log, dest)
        # Removed at the end, not now: on an ext4 without a journal, inodes freed in the
        # last ~30 s are skipped one by one (reading each from disk) when a new inode is
        # allocated, which made the next pull's file creation several times slower.
        env.workdirs.append(workdir)


# -- report ----------------------------------------------------------------------------------


def loadavg() -> str:
    """1/5/15-minute load: other work on the machine skews every number here."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info(containerd: str | None) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        version = importlib.metadata.version("cri-async")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    commit = cmd_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "python": sys.version.split()[0],
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "cri-async": f"{version} (git {commit}, working tree as is)",
        "containerd": cmd_version([containerd, "--version"]) if containerd else "not available",
        "registry": cmd_version(["docker-registry", "--version"]),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "unpigz": shutil.which("unpigz") or "not installed",
        "loadavg": loadavg(),
    }


def summarize(
    images: Sequence[BenchImage], samples: Sequence[Sample], runtimes: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for image in images:
        for rt in runtimes:
            mine = [s for s in samples if s.image == image.key and s.runtime == rt]
            if not mine:
                continue
            wall = statistics.median(s.wall_s for s in mine)
            rows.append(
                {
                    "image": image.key,
                    "runtime": rt,
                    "runs": len(mine),
                    "wall_median_s": wall,
                    "wall_min_s": min(s.wall_s for s in mine),
                    "cpu_median_s": statistics.median(s.cpu_s for s in mine),
                    "cpu_min_s": min(s.cpu_s for s in mine),
                    "user_median_s": statistics.median(s.user_s for s in mine),
                    "sys_median_s": statistics.median(s.sys_s for s in mine),
                    "rss_peak_median_mib": statistics.median(s.rss_peak_mib for s in mine),
                    "rss_idle_median_mib": statistics.median(s.rss_idle_mib for s in mine),
                    "mib_per_s": image.compressed / MIB / wall,
                }
            )
    return rows


def print_table(
    images: Sequence[BenchImage], rows: Sequence[dict[str, Any]], have_ctrd: bool
) -> None:
    head = (
        f"{'image':<24}{'runtime':<12}{'wall s med/min':>15}{'CPU s med/min':>15}"
        f"{'usr+sys med':>13}{'peak RSS MiB':>14}{'MiB/s':>7}"
    )
    print(head)
    print("-" * len(head))
    for image in images:
        by_rt = {r["runtime"]: r for r in rows if r["image"] == image.key}
        for rt in (CRI_ASYNC, CONTAINERD):
            r = by_rt.get(rt)
            if r is None:
                if rt == CONTAINERD and not have_ctrd:
                    print(f"{image.name:<24}{rt:<12}{'not available':>15}")
                continue
            wall = f"{r['wall_median_s']:.2f}/{r['wall_min_s']:.2f}"
            cpu = f"{r['cpu_median_s']:.2f}/{r['cpu_min_s']:.2f}"
            split = f"{r['user_median_s']:.2f}+{r['sys_median_s']:.2f}"
            print(
                f"{image.name:<24}{rt:<12}{wall:>15}{cpu:>15}{split:>13}"
                f"{r['rss_peak_median_mib']:>14.0f}{r['mib_per_s']:>7.1f}"
            )
        ours, theirs = by_rt.get(CRI_ASYNC), by_rt.get(CONTAINERD)
        if ours and theirs:
            w = f"{ours['wall_median_s'] / theirs['wall_median_s']:.2f}"
            w += f"/{ours['wall_min_s'] / theirs['wall_min_s']:.2f}"
            c = f"{ours['cpu_median_s'] / theirs['cpu_median_s']:.2f}"
            c += f"/{ours['cpu_min_s'] / theirs['cpu_min_s']:.2f}"
            print(f"{'':<24}{'ratio':<12}{w:>15}{c:>15}   (cri-async / containerd; < 1: faster)")
    print("MiB/s: compressed layer bytes / median wall")
    print()


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3, help="cold pulls per image and runtime (3)")
    p.add_argument("--only", choices=("a", "b"), help="only image a (big) or b (small files)")
    p.add_argument("--no-containerd", action="store_true", help="skip the containerd baseline")
    p.add_argument("--json", type=Path, help="write samples and summary here")
    p.add_argument(
        "--tmp",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where state dirs go (default: $TMPDIR or /tmp)",
    )
    p.add_argument("--keep-logs", type=Path, help="copy every server's log into this dir")
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile each cri-async pull with py-spy (on PATH or beside this Python) into "
        "DIR/cri-async-<image>-run<N>.txt (collapsed stacks; timings then include the "
        "sampling overhead)",
    )
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be >= 1")
    return a


async def pull_all(
    args: argparse.Namespace,
    env: Env,
    images: Sequence[BenchImage],
    runtimes: Sequence[str],
    samples: list[Sample],
) -> None:
    """Push the images, then ``--runs`` rounds of one cold pull per image and runtime."""
    with LocalRegistry() as reg:
        for image in images:
            im.push(reg, image.repo, image.built, tag="latest")
        print(f"pushed to {reg.url}; {args.runs} cold pull(s) per image and runtime\n")
        for n in range(args.runs):
            for image in images:
                for rt in runtimes:
                    s = await measure(env, rt, image, reg, n)
                    samples.append(s)
                    print(
                        f"  run {n + 1} {image.key} {rt:<10} wall {s.wall_s:6.2f}s  "
                        f"cpu {s.user_s:5.2f}+{s.sys_s:5.2f}s  peak RSS {s.rss_peak_mib:4.0f} MiB"
                        f"  faults {s.minor_faults:7d}  ctx sw {s.ctx_switches:6d}"
                        f"  threads {s.threads}",
                        flush=True,
                    )


async def run(args: argparse.Namespace) -> int:
    containerd = None if args.no_containerd else shutil.which(CONTAINERD)
    if containerd is None and not args.no_containerd and os.access("/usr/bin/containerd", os.X_OK):
        containerd = "/usr/bin/containerd"
    env = Env(sys.executable, containerd, args.tmp, args.keep_logs)
    if args.py_spy is not None:
        env.profile_dir = args.py_spy
        env.py_spy = find_py_spy()
        if env.py_spy is None:
            print("py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
    info = machine_info(containerd)
    for k, v in info.items():
        print(f"{k + ':':<12}{v}")
    if containerd is None and not args.no_containerd:
        print("containerd: not available (apt-get install -y containerd); no ratios")
    runtimes = [CRI_ASYNC] + ([CONTAINERD] if containerd else [])

    t0 = time.perf_counter()
    images = build_images(args.only, workers=os.cpu_count() or 2)
    print(f"\nbuilt in {time.perf_counter() - t0:.1f}s:")
    for image in images:
        print(
            f"  {image.name}: {image.layers} layers, {image.files} files, "
            f"{image.uncompressed / MIB:.1f} MiB tar, {image.compressed / MIB:.1f} MiB gzip"
        )

    samples: list[Sample] = []
    try:
        await pull_all(args, env, images, runtimes, samples)
    finally:
        print(f"removing {len(env.workdirs)} cold stores", flush=True)
        for workdir in env.workdirs:
            remove_tree(workdir)
    info["loadavg_end"] = loadavg()
    print(f"loadavg at the end: {info['loadavg_end']}\n")

    rows = summarize(images, samples, runtimes)
    print_table(images, rows, containerd is not None)
    if args.json is not None:
        doc = {
            "machine": info,
            "images": [
                {
                    "key": i.key,
                    "name": i.name,
                    "layers": i.layers,
                    "files": i.files,
                    "uncompressed_bytes": i.uncompressed,
                    "compressed_bytes": i.compressed,
                    "image_id": i.built.image_id,
                }
                for i in images
            ],
            "samples": [asdict(s) | {"cpu_s": s.cpu_s} for s in samples],
            "summary": rows,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
