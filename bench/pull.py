"""Cold pull + unpack from a local registry: cri-async against containerd's CRI plugin.

What it measures. Two images are built once in memory and pushed to one local CNCF registry
(``docker-registry``, see ``tests/support/registry.py``):

* ``a``, "big": 20 gzip layers of 10 MiB each (200 MiB uncompressed, ~400 files). Half of the
  files are raw pseudo-random bytes (incompressible; deflate stores them), the other half
  pseudo-random hex text (about 2:1 under gzip, so inflate really decodes Huffman codes);
* ``b``, "small files": one gzip layer of 10,000 files of 1-4 KiB in 100 nested directories.

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

The containerd baseline (Debian's ``containerd``: ``apt-get install -y containerd``) runs
per pull as ``containerd --config <tmp>/config.toml`` with root, state, sockets and the
``opt`` plugin under a temp dir, unused snapshotters disabled, the CRI plugin on the overlayfs
snapshotter (the same kind of unpack work: one directory per layer) and a ``certs.d`` hosts
file that sends the local registry over plain HTTP. Both runtimes run with their defaults
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
import concurrent.futures
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchhost import pdeathsig  # noqa: E402

from cri_async.client import CRIClient  # noqa: E402
from tests.support import images as im  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEX = bytes(b"0123456789abcdef"[i & 15] for i in range(256))
CONTAINERD = "containerd"
CRI_ASYNC = "cri-async"
START_TIMEOUT = 30.0
PULL_TIMEOUT = 600.0


# -- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchImage:
    key: str  # "a" | "b"
    name: str
    repo: str
    built: im.BuiltImage = field(repr=False)
    files: int
    uncompressed: int

    @property
    def layers(self) -> int:
        return len(self.built.layers)

    @property
    def compressed(self) -> int:
        return sum(lay.size for lay in self.built.layers)


def _content(rng: random.Random, size: int, text: bool) -> bytes:
    data = rng.randbytes(size)
    return data.translate(HEX) if text else data


def big_layer_entries(seed: int, small: bool = False) -> list[im.Entry]:
    """10 MiB in 20 files: 4 x 2 MiB and 16 x 128 KiB, alternately raw and hex (``small``:
    1 MiB in 8 files, for smoke runs)."""
    rng = random.Random(seed)
    entries: list[im.Entry] = []
    sizes = [256 * 1024] * 4 + [16 * 1024] * 4 if small else [2 * MIB] * 4 + [128 * 1024] * 16
    for i, size in enumerate(sizes):
        entries.append(
            im.File(f"opt/big/l{seed:02d}/f{i:02d}.bin", _content(rng, size, text=i % 2 == 1))
        )
    return entries


def small_files_entries(seed: int, count: int) -> list[im.Entry]:
    """``count`` files of 1-4 KiB of hex text, 100 per directory, two levels deep."""
    rng = random.Random(seed)
    entries: list[im.Entry] = []
    for i in range(count):
        d, f = divmod(i, 100)
        path = f"usr/share/pkg{d // 10:02d}/sub{d % 10}/file{f:03d}.txt"
        entries.append(im.File(path, _content(rng, rng.randint(1024, 4096), text=True)))
    return entries


def build_images(only: str | None, workers: int, small: bool = False) -> list[BenchImage]:
    """Images a and b; ``small``: 4 layers of 1 MiB and 1,000 files (smoke runs)."""
    out: list[BenchImage] = []
    n_layers, n_files = (4, 1_000) if small else (20, 10_000)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # zlib releases the GIL
        if only in (None, "a"):
            entries = pool.map(lambda s: im.layer(big_layer_entries(s, small)), range(n_layers))
            layers = list(entries)
            built = im.build_image(layers)
            size = sum(len(lay.tar) for lay in layers)
            name = f"a: {size / MIB:.0f} MiB / {n_layers} layers"
            files = n_layers * (8 if small else 20)
            out.append(BenchImage("a", name, "bench/big", built, files=files, uncompressed=size))
        if only in (None, "b"):
            lay = im.layer(small_files_entries(1000, n_files))
            built = im.build_image([lay])
            name = f"b: {n_files:,} small files"
            out.append(
                BenchImage(
                    "b", name, "bench/small", built, files=n_files, uncompressed=len(lay.tar)
                )
            )
    return out


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


def _stat_fields(path: Path) -> list[str]:
    stat = path.read_text()
    return stat[stat.rindex(")") + 2 :].split()  # [0] is field 3 of proc(5), "state"


def proc_usage(pid: int) -> Usage:
    f = _stat_fields(Path(f"/proc/{pid}/stat"))
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


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == str(path) or mp.startswith(prefix):
            out.append(mp)
    return out


def remove_tree(path: Path) -> None:
    """rmtree, after detaching anything still mounted below ``path`` (never crosses one)."""
    left = mounts_under(path)
    if left:
        libc = ctypes.CDLL(None, use_errno=True)
        for mp in sorted(left, key=len, reverse=True):
            libc.umount2(mp.encode(), 2)  # MNT_DETACH
        left = mounts_under(path)
        if left:
            print(f"warning: not removing {path}: still mounted: {left}", file=sys.stderr)
            return
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Server:
    runtime: str
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    snapshots: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self, tail: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def spawn(runtime: str, argv: Sequence[str], workdir: Path, **paths: Path) -> Server:
    log = workdir / "server.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=pdeathsig(),
        )
    return Server(runtime, proc, paths["socket"], log, paths["snapshots"])


def start_cri_async(workdir: Path, python: str) -> Server:
    sock = workdir / "cri-async.sock"
    state = workdir / "state"
    cfg = workdir / "config.toml"
    cfg.write_text(
        f'[server]\nsocket = "{sock}"\n'
        '[log]\nlevel = "warning"\n'
        f'[state]\nroot = "{state}"\nrun_root = "{workdir / "run"}"\n'
        '[images]\nbackend = "registry"\n'
        # Pulls need no OCI runtime: the fake backend keeps runc/conmon out of the picture.
        '[runtimes.""]\nbackend = "fake"\n'
    )
    argv = [python, "-m", "cri_async.cli", "serve", "--config", str(cfg)]
    return spawn(CRI_ASYNC, argv, workdir, socket=sock, snapshots=state / "snapshots")


def start_containerd(workdir: Path, binary: str, registry_host: str) -> Server:
    sock = workdir / "containerd.sock"
    root = workdir / "root"
    hosts = workdir / "certs.d" / registry_host
    hosts.mkdir(parents=True)
    url = f"http://{registry_host}"
    (hosts / "hosts.toml").write_text(
        f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    disabled = [
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.internal.v1.tracing",
        "io.containerd.tracing.processor.v1.otlp",
    ]
    cfg = workdir / "config.toml"
    cfg.write_text(
        "version = 2\n"
        f'root = "{root}"\n'
        f'state = "{workdir / "state"}"\n'
        f"disabled_plugins = {json.dumps(disabled)}\n"
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n  level = "warn"\n'
        '[metrics]\n  address = ""\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{workdir / "opt"}"\n'
        f"[{cri}]\n"
        '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n'
        f'[{cri}.containerd]\n  snapshotter = "overlayfs"\n'
        f'[{cri}.cni]\n  bin_dir = "{workdir / "cni/bin"}"\n'
        f'  conf_dir = "{workdir / "cni/net.d"}"\n'
        f'[{cri}.registry]\n  config_path = "{workdir / "certs.d"}"\n'
    )
    argv = [binary, "--config", str(cfg)]
    snaps = root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    return spawn(CONTAINERD, argv, workdir, socket=sock, snapshots=snaps)


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.runtime} exited with {server.proc.returncode}:\n{server.logs()}"
            )
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
    raise RuntimeError(
        f"{server.runtime} not ready after {START_TIMEOUT}s ({last!r}):\n{server.logs()}"
    )


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


@contextlib.contextmanager
def py_spy(pid: int, binary: str | None, out: Path | None) -> Iterator[None]:
    """``py-spy record`` on ``pid`` while the body runs (no-op without ``out``): collapsed
    stacks per thread, idle stacks left out, so the file shows where the CPU went."""
    if out is None or binary is None:
        yield
        return
    argv = [binary, "record", "--pid", str(pid), "--rate", "200", "--threads"]
    argv += ["--format", "raw", "--output", str(out)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # attach before the RPC starts (nothing else runs on our loop)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)


async def pull_once(
    server: Server, image: BenchImage, ref: str, run: int, env: Env | None = None
) -> Sample:
    await wait_ready(server)
    pid = server.pid
    rss_idle = proc_status_int(pid, "VmRSS") / 1024
    client = CRIClient(server.socket)
    profile = None
    if env is not None and env.profile_dir is not None and server.runtime == CRI_ASYNC:
        env.profile_dir.mkdir(parents=True, exist_ok=True)
        profile = env.profile_dir / f"{server.runtime}-{image.key}-run{run + 1}.txt"
    try:
        with py_spy(pid, env.py_spy if env else None, profile):
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
        if runtime == CRI_ASYNC:
            server = start_cri_async(workdir, env.python)
        else:
            assert env.containerd is not None
            server = start_containerd(workdir, env.containerd, reg.host)
        try:
            return await pull_once(server, image, reg.ref(image.repo), run, env)
        except BaseException:
            print(f"--- {runtime} log (tail) ---\n{server.logs()}", file=sys.stderr)
            raise
    finally:
        if server is not None:
            server.stop()
            if env.keep_logs is not None:
                env.keep_logs.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy(server.log, env.keep_logs / f"{runtime}-{image.key}-{run}.log")
        # Removed at the end, not now: on an ext4 without a journal, inodes freed in the
        # last ~30 s are skipped one by one (reading each from disk) when a new inode is
        # allocated, which made the next pull's file creation several times slower.
        env.workdirs.append(workdir)


# -- report ----------------------------------------------------------------------------------


def _cmd_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


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
    commit = _cmd_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "python": sys.version.split()[0],
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "cri-async": f"{version} (git {commit}, working tree as is)",
        "containerd": _cmd_version([containerd, "--version"]) if containerd else "not available",
        "registry": _cmd_version(["docker-registry", "--version"]),
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
        env.py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
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
