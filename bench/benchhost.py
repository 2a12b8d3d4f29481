"""Host helpers shared by the benchmarks: process CPU, mounts, processes, cgroups, and the
raw OCI-runtime floor (a container run straight through ``runc``/``crun``, optionally under
conmon) that the lifecycle figures are compared with."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import io
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cri_async.oci.defaults import (  # noqa: E402
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_PATH_ENV,
    DEFAULT_READONLY_PATHS,
    capabilities_from_mask,
    default_mounts,
)
from tests.support import images as im  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")
FLOOR_CGROUP = "crb-floor"
CMD_TIMEOUT = 30.0


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile, linearly interpolated between closest ranks (numpy's default)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pdeathsig() -> Callable[[], None] | None:
    """Make a child die with us even if we are SIGKILLed (main thread only)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sig = int(signal.SIGKILL)

    def hook() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return hook


@dataclass(frozen=True)
class CPU:
    """utime+stime of a process, and of the children it has reaped, in seconds."""

    self_s: float
    children_s: float

    def __sub__(self, o: CPU) -> CPU:
        return CPU(self.self_s - o.self_s, self.children_s - o.children_s)


def proc_cpu(pid: int) -> CPU:
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2 :].split()  # f[0] is field 3 of proc(5)
    ut, st, cut, cst = (int(x) for x in f[11:15])  # fields 14-17
    return CPU((ut + st) / CLK_TCK, (cut + cst) / CLK_TCK)


def mounts_under(*paths: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        for p in paths:
            if mp == str(p) or mp.startswith(str(p).rstrip("/") + "/"):
                out.append(mp)
                break
    return out


def processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every process other than us whose command line contains needle."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append((int(d.name), cmd.strip()))
    return found


def cgroup_dirs(rel: str) -> list[Path]:
    """``rel`` in every mounted hierarchy where it exists."""
    hier = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]
    return [h / rel for h in hier if (h / rel).is_dir()]


def rmdir_cgroup_tree(rel: str) -> list[str]:
    """rmdir ``rel`` and its sub-cgroups (deepest first) in every hierarchy; returns what
    could not be removed (still holding processes)."""
    left = []
    for top in cgroup_dirs(rel):
        subdirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for d in subdirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                left.append(f"{d}: {e.strerror}")
    return left


def cmd_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


# -- the raw floor ----------------------------------------------------------------------------


def host_capabilities() -> list[str]:
    status = Path("/proc/self/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:"))
    have = capabilities_from_mask(mask)
    return [c for c in DEFAULT_CAPABILITIES if c in have]


def floor_spec(
    rootfs: Path,
    cid: str,
    caps: list[str],
    args: Sequence[str] = ("true",),
    cgroup: str = FLOOR_CGROUP,
) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [DEFAULT_PATH_ENV],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "floor",
        "mounts": default_mounts(),
        "linux": {
            "cgroupsPath": f"/{cgroup}/{cid}",
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


def unpack_rootfs(image: im.BuiltImage, dest: Path) -> None:
    """The image's layers, in order, into ``dest`` (our own image: no whiteouts)."""
    dest.mkdir(parents=True)
    for layer in image.layers:
        with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
            tar.extractall(dest, filter="fully_trusted")


class FloorError(RuntimeError):
    pass


def wait_pidfd(pidfd: int, timeout: float) -> None:
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    if not p.poll(timeout * 1e3):
        raise FloorError(f"process did not exit within {timeout}s")


def wait_exact(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` to exit, without the sleep-polling of ``Popen.wait(timeout)`` (its
    backoff reaches 50 ms steps, which would inflate every floor step): a pidfd is polled,
    then the child is reaped."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        wait_pidfd(pidfd, timeout)
    except FloorError:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(pidfd)
    return proc.wait()


def read_line(fd: int, timeout: float) -> bytes:
    """The first line written to pipe ``fd`` (less if it is closed first)."""
    data = b""
    p = select.poll()
    p.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        if not p.poll(max(0.0, deadline - time.monotonic()) * 1e3):
            raise FloorError(f"nothing on the sync pipe within {timeout}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def file_tail(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace").strip()[-2000:]


def reap(pid: int) -> None:
    """Reap ``pid`` if it is our child (re-parented to us as subreaper); else let it be."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@dataclass
class Floor:
    """One runtime binary driven directly (``raw``) or through conmon, as cri-async does."""

    backend: str
    binary: str
    conmon: str
    root: Path  # --root of the runtime
    bundles: Path
    rootfs: Path
    caps: list[str]
    cgroup: str = FLOOR_CGROUP  # cgroupsPath parent of every floor container

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bundles.mkdir(parents=True, exist_ok=True)
        (self.bundles / "exits").mkdir(exist_ok=True)
        (self.bundles / "s").mkdir(exist_ok=True)

    def _bundle(self, cid: str, args: Sequence[str] = ("true",)) -> Path:
        b = self.bundles / cid
        b.mkdir()
        spec = floor_spec(self.rootfs, cid, self.caps, args, self.cgroup)
        (b / "config.json").write_text(json.dumps(spec))
        return b

    def _run(self, *args: str) -> None:
        argv = [self.binary, f"--root={self.root}", *args]
        # stderr to a file (thread-safe: one per call), never a pipe.
        with tempfile.TemporaryFile(prefix="floor-") as errf:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf
            )
            rc = wait_exact(proc, CMD_TIMEOUT)
            if rc != 0:
                raise FloorError(f"{' '.join(argv)} exited {rc}: {file_tail(errf)}")

    def raw_once(self, cid: str) -> dict[str, float]:
        bundle = self._bundle(cid)
        pidfile = bundle / "pid"
        try:
            t0 = time.perf_counter()
            self._run("create", "--bundle", str(bundle), "--pid-file", str(pidfile), cid)
            t1 = time.perf_counter()
            pid = int(pidfile.read_text())
            pidfd = os.pidfd_open(pid)
            try:
                self._run("start", cid)
                t2 = time.perf_counter()
                wait_pidfd(pidfd, CMD_TIMEOUT)
                reap(pid)
            finally:
                os.close(pidfd)
            t3 = time.perf_counter()
            self._run("delete", cid)
            t4 = time.perf_counter()
        except BaseException:
            self.force_delete(cid)
            raise
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
        return {"create": t1 - t0, "start": t2 - t1, "wait": t3 - t2, "delete": t4 - t3}

    def conmon_once(self, cid: str) -> dict[str, float]:
        bundle = self._bundle(cid)
        exits = self.bundles / "exits"
        argv = [
            self.conmon,
            "-b", str(bundle),
            "-c", cid,
            "-u", cid,
            "-n", cid,
            "--exit-dir", str(exits),
            "-l", f"k8s-file:{bundle / 'ctr.log'}",
            "--log-level", "info",
            "-P", str(bundle / "conmon.pid"),
            "-p", str(bundle / "pidfile"),
            "--persist-dir", str(bundle),
            "-r", self.binary,
            "--socket-dir-path", str(self.bundles / "s"),
            "--runtime-arg", f"--root={self.root}",
        ]  # fmt: skip
        conmon_pid: int | None = None
        errf = tempfile.TemporaryFile(prefix="floor-conmon-")  # noqa: SIM115 (closed below)
        try:
            sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
            start_r, start_w = os.pipe2(os.O_CLOEXEC)
            t0 = time.perf_counter()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=errf,
                    stderr=errf,
                    pass_fds=(sync_w, start_r),
                    env={
                        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                        "_OCI_SYNCPIPE": str(sync_w),
                        "_OCI_STARTPIPE": str(start_r),
                    },
                    cwd=bundle,
                )
            finally:
                os.close(sync_w)
                os.close(start_r)
            try:
                os.write(start_w, b"0")
            finally:
                os.close(start_w)
            try:
                rc = wait_exact(proc, CMD_TIMEOUT)
                if rc != 0:
                    raise FloorError(f"conmon exited {rc}: {file_tail(errf)}")
                line = read_line(sync_r, CMD_TIMEOUT)
            finally:
                os.close(sync_r)
            msg = json.loads(line or b"{}")
            pid = msg.get("pid")
            if not isinstance(pid, int) or pid <= 0:
                raise FloorError(f"conmon create failed: {msg} {file_tail(errf)}")
            t1 = time.perf_counter()
            conmon_pid = int((bundle / "conmon.pid").read_text())
            pidfd = os.pidfd_open(pid)
            try:
                self._run("start", cid)
                t2 = time.perf_counter()
                wait_pidfd(pidfd, CMD_TIMEOUT)  # conmon reaps it; the exit file follows
            finally:
                os.close(pidfd)
            exit_file = exits / cid
            deadline = time.monotonic() + CMD_TIMEOUT
            while not exit_file.exists():
                if time.monotonic() > deadline:
                    raise FloorError("conmon wrote no exit file")
                time.sleep(0.0002)
            t3 = time.perf_counter()
            self._run("delete", cid)
            t4 = time.perf_counter()
        except BaseException:
            if conmon_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(conmon_pid, signal.SIGKILL)
            self.force_delete(cid)
            raise
        finally:
            errf.close()
            if conmon_pid is not None:
                reap(conmon_pid)  # it exits once the exit file is written; re-parented to us
            (exits / cid).unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (self.bundles / "s" / cid).unlink()
            shutil.rmtree(bundle, ignore_errors=True)
        return {"create": t1 - t0, "start": t2 - t1, "wait": t3 - t2, "delete": t4 - t3}

    def up(self, cid: str) -> int:
        """create + start of a ``sleep 1000`` container (as the concurrent pods run); returns
        its pid for ``down``."""
        bundle = self._bundle(cid, ("sleep", "1000"))
        try:
            self._run("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid)
            self._run("start", cid)
            return int((bundle / "pid").read_text())
        except BaseException:
            self.force_delete(cid)
            shutil.rmtree(bundle, ignore_errors=True)
            raise

    def down(self, cid: str, pid: int) -> None:
        """kill -9, wait for the exit, delete: what StopContainer + RemoveContainer do."""
        try:
            pidfd = os.pidfd_open(pid)
            try:
                self._run("kill", cid, "KILL")
                wait_pidfd(pidfd, CMD_TIMEOUT)
            finally:
                os.close(pidfd)
            reap(pid)
            self._run("delete", cid)
        except BaseException:
            self.force_delete(cid)
            raise
        finally:
            shutil.rmtree(self.bundles / cid, ignore_errors=True)

    def exec(self, cid: str, *args: str) -> float:
        """``runtime exec`` of ``args`` in a running container, waited for (the ExecSync
        floor); seconds."""
        t0 = time.perf_counter()
        self._run("exec", cid, *args)
        return time.perf_counter() - t0

    def force_delete(self, cid: str) -> None:
        with contextlib.suppress(Exception):
            self._run("delete", "--force", cid)


@dataclass
class Batch:
    """``n`` floor containers started at once, then removed at once (seconds)."""

    up_wall: float = math.nan
    up: list[float] = field(default_factory=list)
    down_wall: float = math.nan
    down: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def floor_batch(floor: Floor, n: int, prefix: str = "conc") -> Batch:
    """The floor of "n pods at once": ``n`` ``sleep`` containers created and started at once
    straight through the runtime (a thread each), then killed, waited for and deleted at once."""
    out = Batch()
    cids = [f"{prefix}-{floor.backend}-{i}" for i in range(n)]

    def up(cid: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        pid = floor.up(cid)
        return pid, time.perf_counter() - t0

    def down(cid: str, pid: int) -> float:
        t0 = time.perf_counter()
        floor.down(cid, pid)
        return time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        ups = [pool.submit(up, c) for c in cids]
        concurrent.futures.wait(ups)
        out.up_wall = time.perf_counter() - t0
        started = []
        for cid, f in zip(cids, ups, strict=True):
            if f.exception() is not None:
                out.errors.append(f"floor start: {f.exception()!r}")
                continue
            pid, took = f.result()
            started.append((cid, pid))
            out.up.append(took)
        t0 = time.perf_counter()
        downs = [pool.submit(down, c, p) for c, p in started]
        concurrent.futures.wait(downs)
        out.down_wall = time.perf_counter() - t0
        for d in downs:
            if d.exception() is not None:
                out.errors.append(f"floor remove: {d.exception()!r}")
            else:
                out.down.append(d.result())
    return out
