"""Real runc/crun (youki if installed) under real conmon, as root, on a hand-built bundle.

Without a runtime or conmon the tests skip, except with ``CI=true``, where that is a failure.
Every test leaves nothing behind: no conmon or runtime process, no runtime state, no socket
links, no cgroups (the runtimes do not remove the ``cri-async-test`` parent; we do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cri_async.backends.ocicli import RuntimeCLI
from cri_async.monitor.conmon import Conmon
from cri_async.monitor.hostprep import prepare_host
from cri_async.monitor.reaper import Reaper, become_subreaper
from tests.support.poll import until
from tests.support.prereq import need_binary, need_file, need_root
from tests.support.procs import proc_state, processes_mentioning

CGROUP_PARENT = "cri-async-test"
CGROUP_ROOT = Path("/sys/fs/cgroup")
STATE_BASE = Path("/run/cri-async-test")
APPLETS = (
    "sh",
    "echo",
    "sleep",
    "cat",
    "id",
    "ls",
    "true",
    "false",
    "printf",
    "stty",
    "seq",
    "setsid",
    "dd",
)
# A few capabilities every container runtime setup here has in its bounding set
# (CAP_SYS_RESOURCE is missing from this VM's bounding set).
CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID")
_CAP_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_KILL": 5}
_CAP_BITS |= {"CAP_SETGID": 6, "CAP_SETUID": 7}


def _runtimes() -> list[str]:
    names = ["runc", "crun"]
    if shutil.which("youki"):
        names.append("youki")
    return names


def _bounding_caps() -> list[str]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return [c for c in CAPS if mask >> _CAP_BITS[c] & 1]
    return []


@pytest.fixture(scope="session")
def host_ready() -> list[str]:
    need_root()
    return prepare_host()


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    busybox = Path(need_file("/bin/busybox", "apt-get install busybox-static"))
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (root / d).mkdir()
    return root


def oci_config(
    args: Sequence[str],
    *,
    rootfs: Path,
    cid: str,
    tty: bool = False,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    caps = _bounding_caps()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": tty,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "t",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "resources": resources or {},
            "cgroupsPath": f"/{CGROUP_PARENT}/{cid}",
        },
    }


def cgroup_dirs(cid: str | None = None) -> list[Path]:
    """Existing ``cri-async-test[/cid]`` directories in every hierarchy."""
    rel = CGROUP_PARENT if cid is None else f"{CGROUP_PARENT}/{cid}"
    return [h / rel for h in sorted(CGROUP_ROOT.iterdir()) if (h / rel).is_dir()]


def lexists(path: str | Path) -> bool:
    return os.path.lexists(path)


def list_dir(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def _read_if(path: Path, needle: bytes) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if needle in data else None


@dataclass
class Ctr:
    cid: str
    bundle: Path
    log: Path
    pid: int = 0


@dataclass
class Env:
    name: str
    rootfs: Path
    tmp: Path
    token: str
    runtime: RuntimeCLI
    conmon: Conmon
    reaper: Reaper
    exit_dir: Path
    created: list[str] = field(default_factory=list)

    def cid(self, label: str) -> str:
        return f"{label}-{self.token}"

    def bundle(
        self,
        label: str,
        args: Sequence[str],
        *,
        tty: bool = False,
        resources: dict[str, Any] | None = None,
    ) -> Ctr:
        cid = self.cid(label)
        bundle = self.tmp / "bundles" / cid
        bundle.mkdir(parents=True)
        cfg = oci_config(args, rootfs=self.rootfs, cid=cid, tty=tty, resources=resources)
        (bundle / "config.json").write_text(json.dumps(cfg))
        log = self.tmp / "logs" / f"{cid}.log"
        log.parent.mkdir(exist_ok=True)
        return Ctr(cid, bundle, log)

    async def create(self, ctr: Ctr, *, tty: bool = False, stdin: bool = False) -> Ctr:
        self.created.append(ctr.cid)
        ctr.pid = await self.conmon.create(
            ctr.cid,
            ctr.cid,
            ctr.bundle,
            str(ctr.log),
            tty=tty,
            stdin=stdin,
            stdin_once=False,
            exit_dir=self.exit_dir,
        )
        return ctr

    async def run(
        self,
        label: str,
        args: Sequence[str],
        *,
        tty: bool = False,
        resources: dict[str, Any] | None = None,
    ) -> Ctr:
        ctr = await self.create(self.bundle(label, args, tty=tty, resources=resources), tty=tty)
        await self.runtime.start(ctr.cid)
        return ctr

    async def wait_exit(self, ctr: Ctr, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            return await self.conmon.wait_exit(ctr.cid, ctr.bundle, self.exit_dir)

    async def wait_log(self, path: Path, needle: bytes, timeout: float = 5.0) -> bytes:
        return await until(
            lambda: _read_if(path, needle), timeout=timeout, what=f"{needle!r} in {path}"
        )

    async def wait_conmon_gone(self, ctr: Ctr, timeout: float = 5.0) -> int:
        """Wait until the container's conmon has exited and been reaped; return its pid."""
        pid = self.conmon.conmon_pid(ctr.bundle)
        assert pid is not None
        await until(
            lambda: proc_state(pid) is None,
            timeout=timeout,
            interval=0.005,
            what=f"conmon {pid} to be reaped",
        )
        return pid

    async def remove(self, ctr: Ctr) -> None:
        await self.runtime.delete(ctr.cid, force=True)
        self.conmon.remove(ctr.cid, self.exit_dir)


@pytest.fixture(params=_runtimes())
def runtime_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def env(
    runtime_name: str, host_ready: list[str], rootfs: Path, tmp_path: Path
) -> AsyncIterator[Env]:
    binary = need_binary(runtime_name, sbin=True)
    conmon_bin = need_binary("conmon", sbin=True)
    token = secrets.token_hex(4)
    root = STATE_BASE / f"{runtime_name}-{token}"
    socket_dir = STATE_BASE / f"s-{token}"
    runtime = RuntimeCLI(binary, str(root))
    become_subreaper()
    reaper = Reaper()
    reaper.start()
    conmon = Conmon(
        conmon_bin,
        runtime_path=binary,
        runtime_args=runtime.global_args(),
        socket_dir=str(socket_dir),
        log_level="debug",
        reaper=reaper,
    )
    e = Env(runtime_name, rootfs, tmp_path, token, runtime, conmon, reaper, tmp_path / "exits")
    try:
        yield e
    finally:
        try:
            await _teardown(e, root, socket_dir)
        finally:
            reaper.sweep()
            reaper.close()
            become_subreaper(False)


async def _teardown(e: Env, root: Path, socket_dir: Path) -> None:
    for cid in e.created:
        await e.runtime.kill(cid, 9, all=True)
    for cid in e.created:
        await e.runtime.delete(cid, force=True)
        e.conmon.remove(cid, e.exit_dir)
    # conmons exit once their container is gone; give the reaper a moment to collect them.
    with contextlib.suppress(AssertionError):  # what is left is reported just below
        await until(lambda: not processes_mentioning(e.token), timeout=5)
    leftovers = _leftovers(e, root, socket_dir)
    _remove_all(e, root, socket_dir)
    assert leftovers == {"processes": [], "state": [], "sockets": [], "cgroups": []}


def _leftovers(e: Env, root: Path, socket_dir: Path) -> dict[str, list[str]]:
    return {
        "processes": list(processes_mentioning(e.token).values()),
        "state": sorted(os.listdir(root)) if root.exists() else [],
        "sockets": sorted(os.listdir(socket_dir)) if socket_dir.exists() else [],
        "cgroups": [str(d) for cid in e.created for d in cgroup_dirs(cid)],
    }


def _remove_all(e: Env, root: Path, socket_dir: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(socket_dir, ignore_errors=True)
    shutil.rmtree(e.tmp / "bundles", ignore_errors=True)
    with contextlib.suppress(OSError):  # another runtime's root or sockets are still there
        STATE_BASE.rmdir()
    for d in cgroup_dirs():
        with contextlib.suppress(OSError):  # EBUSY: another run's containers are in it
            d.rmdir()
