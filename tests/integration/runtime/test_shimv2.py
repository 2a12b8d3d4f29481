"""containerd-shim-runc-v2 (Debian's containerd package) driven through our shim v2 client.

Real shim, real runc, real busybox bundles, as root. Without root, the shim or runc the
tests skip, except with ``CI=true``, where that is a failure. Every test leaves nothing
behind: no shim or container process, no shim socket, no mounts, no FIFOs, no cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cri_async import linux
from cri_async.backends.shimv2 import (
    EventServer,
    Mount,
    ProcessIO,
    Shim,
    ShimClient,
    ShimCommandError,
    ShimGone,
    ShimManager,
    Subscription,
    TaskStatus,
    resolve_binary,
    runc_options,
)
from cri_async.backends.shimv2.events import (
    Event,
    TaskCreate,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted,
    TaskExit,
    TaskOOM,
    TaskPaused,
    TaskResumed,
    TaskStart,
)
from cri_async.logs.crilog import OutputCapture, Stream
from cri_async.stats.cgroups import CgroupReader
from cri_async.ttrpc.errors import AlreadyExistsError, NotFoundError
from tests.support.prereq import need_binary
from tests.support.procs import processes_mentioning

from .conftest import (
    CGROUP_PARENT,
    STATE_BASE,
    cgroup_dirs,
    oci_config,
    proc_state,
    until,
)

NS = "cri-async-test"
RUNTIME = "io.containerd.runc.v2"
MiB = 1 << 20


@dataclass
class Task:
    cid: str
    bundle: Path
    shim: Shim
    io: ProcessIO
    out: OutputCapture = field(default_factory=OutputCapture)

    @property
    def client(self) -> ShimClient:
        return self.shim.client


@dataclass
class Rig:
    token: str
    base: Path
    rootfs: Path
    binary: str
    events: EventServer
    sub: Subscription
    manager: ShimManager
    tasks: list[Task] = field(default_factory=list)
    cids: list[str] = field(default_factory=list)
    shim_pids: set[int] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)

    def cid(self, label: str) -> str:
        return f"{label}-{self.token}"

    def bundle(
        self,
        label: str,
        args: Sequence[str],
        *,
        tty: bool = False,
        resources: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
        pid_namespace: bool = True,
    ) -> tuple[str, Path]:
        cid = self.cid(label)
        self.cids.append(cid)
        bundle = self.base / NS / cid
        bundle.mkdir(parents=True)
        cfg = oci_config(args, rootfs=Path("rootfs"), cid=cid, tty=tty, resources=resources)
        cfg["annotations"] = annotations or {}
        if not pid_namespace:
            cfg["linux"]["namespaces"] = [
                n for n in cfg["linux"]["namespaces"] if n["type"] != "pid"
            ]
        (bundle / "config.json").write_text(json.dumps(cfg))
        return cid, bundle

    async def create(
        self,
        label: str,
        args: Sequence[str],
        *,
        stdin: bool = False,
        tty: bool = False,
        **kw: Any,
    ) -> Task:
        cid, bundle = self.bundle(label, args, tty=tty, **kw)
        shim = await self.manager.start(cid, bundle, self.binary)
        self.shim_pids.add(shim.shim_pid)
        self.addresses.add(shim.address)
        io = ProcessIO.open(bundle / "io", stdin=stdin, terminal=tty)
        task = Task(cid, bundle, shim, io)
        self.tasks.append(task)
        await io.start(task.out.write)
        await shim.client.create(
            cid,
            str(bundle),
            stdio=io.stdio,
            rootfs=[Mount("bind", str(self.rootfs), ("rbind", "ro"))],
            options=runc_options(root=str(self.base / "runc")),
        )
        return task

    async def run(self, label: str, args: Sequence[str], **kw: Any) -> Task:
        task = await self.create(label, args, **kw)
        await task.client.start(task.cid)
        return task

    async def event(self, want: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                e = await self.sub.get()
                if want(e):
                    return e

    async def finish(self, task: Task) -> None:
        """Delete the task and shut its shim down, removing our FIFOs and the bundle."""
        with contextlib.suppress(NotFoundError):
            await task.client.delete(task.cid)
        await task.shim.shutdown()
        task.io.close()
        task.io.remove()
        # Our FIFOs (stdio and the shim's log) are gone and nothing is mounted; what
        # remains is the shim's own bookkeeping (address, init.pid, options.json...).
        assert not [p for p in task.bundle.rglob("*") if stat.S_ISFIFO(p.lstat().st_mode)]
        assert not _mounts_under(task.bundle)
        shutil.rmtree(task.bundle)
        self.tasks.remove(task)


def _mounts_under(path: Path) -> list[str]:
    return [m[0] for m in linux.mountinfo() if m[0].startswith(str(path))]


@pytest_asyncio.fixture
async def rig(host_ready: list[str], rootfs: Path) -> AsyncIterator[Rig]:
    binary = resolve_binary(RUNTIME) if shutil.which("containerd-shim-runc-v2") else ""
    if not binary:
        need_binary("containerd-shim-runc-v2", sbin=True)  # skips, or fails with CI=true
    need_binary("runc", sbin=True)
    token = secrets.token_hex(4)
    base = STATE_BASE / f"shim-{token}"
    base.mkdir(parents=True)
    events = EventServer(str(base / "events.sock"))
    await events.start()
    manager = ShimManager(namespace=NS, events_address=events.path, exit_timeout=10)
    r = Rig(token, base, rootfs, binary, events, events.subscribe(NS), manager)
    try:
        yield r
    finally:
        try:
            await _teardown(r)
        finally:
            await events.close()
            shutil.rmtree(base, ignore_errors=True)
            with contextlib.suppress(OSError):
                STATE_BASE.rmdir()
            for d in cgroup_dirs():
                with contextlib.suppress(OSError):  # EBUSY: another test's containers
                    d.rmdir()


async def _teardown(r: Rig) -> None:
    # What a test left running: kill, delete, shut down; then nothing may remain.
    for task in list(r.tasks):
        if not task.shim.closed:
            with contextlib.suppress(Exception):
                await task.client.kill(task.cid, signal.SIGKILL, all=True)
                await task.client.wait(task.cid)
        with contextlib.suppress(Exception):
            await r.finish(task)
    await r.manager.close()
    for pid in r.shim_pids:
        if proc_state(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)  # by the pid the shim reported
    leftovers = {
        "processes": list(processes_mentioning(r.token).values()),
        "sockets": [a for a in r.addresses if os.path.exists(a.removeprefix("unix://"))],
        "mounts": _mounts_under(r.base),
        "runc state": sorted(os.listdir(r.base / "runc" / NS))
        if (r.base / "runc" / NS).exists()
        else [],
        "bundles": sorted(os.listdir(r.base / NS)) if (r.base / NS).exists() else [],
        "cgroups": [str(d) for cid in r.cids for d in cgroup_dirs(cid)],
    }
    assert leftovers == {
        "processes": [],
        "sockets": [],
        "mounts": [],
        "runc state": [],
        "bundles": [],
        "cgroups": [],
    }


def _exit_of(cid: str, exec_id: str = "") -> Callable[[Event], bool]:
    return lambda e: (
        isinstance(e.event, TaskExit) and e.event.container_id == cid and e.event.exec_id == exec_id
    )


async def test_full_lifecycle_with_rootfs_mounts_stdio_and_events(rig: Rig) -> None:
    task = await rig.create("life", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    cid = task.cid
    rootfs = task.bundle / "rootfs"
    assert linux.is_mountpoint(str(rootfs))  # the shim mounted our rootfs mount
    created = await rig.event(lambda e: isinstance(e.event, TaskCreate))
    assert isinstance(created.event, TaskCreate)
    assert (created.namespace, created.topic) == (NS, "/tasks/create")
    assert created.event.container_id == cid and created.event.bundle == str(task.bundle)
    assert created.event.stdio.stdout == task.io.stdio.stdout
    state = await task.client.state(cid)
    assert state.status is TaskStatus.CREATED and state.pid == created.event.pid > 0

    pid = await task.client.start(cid)
    assert pid == state.pid
    started = await rig.event(lambda e: isinstance(e.event, TaskStart))
    assert started.event == TaskStart(cid, pid)

    exit_info = await task.client.wait(cid)
    assert (exit_info.pid, exit_info.exit_status) == (pid, 3)
    assert exit_info.exited_at_ns is not None
    exited = await rig.event(_exit_of(cid))
    assert exited.topic == "/tasks/exit"
    assert exited.event == TaskExit(cid, "", pid, 3, exit_info.exited_at_ns)
    await task.io.wait_eof()
    assert task.out.output(Stream.STDOUT) == b"out\n"
    assert task.out.output(Stream.STDERR) == b"err\n"
    stopped = await task.client.state(cid)
    assert (stopped.status, stopped.exit_status) == (TaskStatus.STOPPED, 3)

    deleted = await task.client.delete(cid)
    assert (deleted.pid, deleted.exit_status) == (pid, 3)
    assert (await rig.event(lambda e: isinstance(e.event, TaskDelete))).event == TaskDelete(
        cid, "", pid, 3, exit_info.exited_at_ns
    )
    assert not linux.is_mountpoint(str(rootfs))  # Delete unmounted it
    with pytest.raises(NotFoundError):
        await task.client.state(cid)

    shim_pid, address = task.shim.shim_pid, task.shim.address
    await rig.finish(task)
    assert proc_state(shim_pid) in (None, "Z")  # Shutdown: the shim exited
    assert not os.path.exists(address.removeprefix("unix://"))


async def test_exec_with_stdin_output_pids_and_duplicate_id(rig: Rig) -> None:
    task = await rig.run("exec", ["sleep", "1000"])
    cid = task.cid
    proc = oci_config(["sh", "-c", "echo hi; cat; echo done >&2"], rootfs=rig.rootfs, cid=cid)
    xio = ProcessIO.open(task.bundle / "x1", stdin=True)
    out = OutputCapture()
    await xio.start(out.write)
    await task.client.exec(cid, "x1", proc["process"], stdio=xio.stdio)
    assert (await rig.event(lambda e: isinstance(e.event, TaskExecAdded))).event == (
        TaskExecAdded(cid, "x1")
    )
    with pytest.raises(AlreadyExistsError):
        await task.client.exec(cid, "x1", proc["process"], stdio=xio.stdio)
    xpid = await task.client.start(cid, "x1")
    assert (await rig.event(lambda e: isinstance(e.event, TaskExecStarted))).event == (
        TaskExecStarted(cid, "x1", xpid)
    )
    pids = await task.client.pids(cid)
    assert {p.pid: p.exec_id for p in pids}[xpid] == "x1"
    assert task.shim.client.closed is False
    assert (await task.client.state(cid, "x1")).status is TaskStatus.RUNNING

    await xio.write_stdin(b"abc\n")
    xio.close_stdin()  # end of input: our write end and the shim's (CloseIO)
    await task.client.close_io(cid, exec_id="x1")
    assert (await task.client.wait(cid, "x1")).exit_status == 0
    assert (await rig.event(_exit_of(cid, "x1"))).event.pid == xpid  # type: ignore[union-attr]
    await xio.wait_eof()
    assert out.output(Stream.STDOUT) == b"hi\nabc\n"
    assert out.output(Stream.STDERR) == b"done\n"
    assert (await task.client.delete(cid, "x1")).exit_status == 0
    xio.close()
    xio.remove()

    await task.client.kill(cid, signal.SIGKILL)
    assert (await task.client.wait(cid)).exit_status == 137
    await rig.finish(task)


async def test_tty_exec_resize_and_close_io(rig: Rig) -> None:
    task = await rig.run("tty", ["cat"], stdin=True)
    cid = task.cid
    await task.io.write_stdin(b"hello\n")
    await until(lambda: task.out.output(Stream.STDOUT) == b"hello\n")
    await task.client.close_io(cid)  # the shim drops its write end of the FIFO ...
    assert (await task.client.state(cid)).status is TaskStatus.RUNNING
    task.io.close_stdin()  # ... and ours was the last: cat reads end of file, exits 0
    assert (await task.client.wait(cid)).exit_status == 0
    await rig.finish(task)

    task = await rig.run("tty2", ["sleep", "1000"])
    proc = oci_config(["sh", "-c", "read x; stty size"], rootfs=rig.rootfs, cid=task.cid, tty=True)
    xio = ProcessIO.open(task.bundle / "t1", stdin=True, terminal=True)
    assert xio.stdio.stderr == ""
    out = OutputCapture()
    await xio.start(out.write)
    await task.client.exec(task.cid, "t1", proc["process"], stdio=xio.stdio)
    await task.client.start(task.cid, "t1")
    await task.client.resize_pty(task.cid, 100, 40, exec_id="t1")
    await xio.write_stdin(b"go\n")
    assert (await task.client.wait(task.cid, "t1")).exit_status == 0
    await xio.wait_eof()
    assert out.output(Stream.STDOUT).endswith(b"40 100\r\n")
    await task.client.delete(task.cid, "t1")
    xio.close()
    xio.remove()
    await task.client.kill(task.cid, signal.SIGKILL)
    await task.client.wait(task.cid)
    await rig.finish(task)


@pytest.mark.parametrize(
    ("sig", "code", "pid_namespace"),
    [(signal.SIGKILL, 137, True), (signal.SIGTERM, 143, False)],
)
async def test_kill_and_wait_exit_code(
    rig: Rig, sig: signal.Signals, code: int, pid_namespace: bool
) -> None:
    # SIGTERM only kills a process that is not its namespace's init (pid 1 ignores it).
    task = await rig.run(f"kill{code}", ["sleep", "1000"], pid_namespace=pid_namespace)
    waiter = asyncio.create_task(task.client.wait(task.cid))
    await task.client.kill(task.cid, sig)
    assert (await waiter).exit_status == code
    assert (await rig.event(_exit_of(task.cid))).event.exit_status == code  # type: ignore[union-attr]
    await rig.finish(task)


async def test_stats_update_pause_resume(rig: Rig) -> None:
    resources = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 50}}
    task = await rig.run(
        "stats",
        ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"],
        resources=resources,
    )
    cid = task.cid
    stats = await task.client.stats(cid)
    direct = CgroupReader.detect().read(f"/{CGROUP_PARENT}/{cid}")
    assert direct is not None
    assert stats.version == direct.version
    assert stats.memory_limit == direct.memory_limit == 64 * MiB
    assert stats.pids_max == direct.pids_max == 50
    assert stats.pids_current is not None and stats.pids_current >= 1
    assert stats.memory_usage is not None and stats.memory_usage > 0
    assert stats.cpu_usage_ns is not None and stats.cpu_usage_ns > 0

    await task.client.update(cid, {"memory": {"limit": 48 * MiB}, "pids": {"limit": 40}})
    updated = await task.client.stats(cid)
    assert (updated.memory_limit, updated.pids_max) == (48 * MiB, 40)

    await task.client.pause(cid)
    assert (await task.client.state(cid)).status is TaskStatus.PAUSED
    assert (await rig.event(lambda e: isinstance(e.event, TaskPaused))).event == TaskPaused(cid)
    await task.client.resume(cid)
    assert (await task.client.state(cid)).status is TaskStatus.RUNNING
    assert (await rig.event(lambda e: isinstance(e.event, TaskResumed))).event == TaskResumed(cid)

    await task.client.kill(cid, signal.SIGKILL)
    await task.client.wait(cid)
    await rig.finish(task)


async def test_oom_kill_is_reported(rig: Rig) -> None:
    task = await rig.run(
        "oom",
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        resources={"memory": {"limit": 16 * MiB}},
    )
    assert (await task.client.wait(task.cid)).exit_status == 137
    oom = await rig.event(lambda e: isinstance(e.event, TaskOOM))
    assert (oom.topic, oom.event) == ("/tasks/oom", TaskOOM(task.cid))
    await rig.finish(task)


async def test_reconnect_after_our_restart(rig: Rig) -> None:
    """Drop every connection and the events endpoint, come back, still wait and kill."""
    task = await rig.run("reco", ["sh", "-c", "read x; echo got $x; sleep 1000"], stdin=True)
    cid, bundle = task.cid, task.bundle
    shim_pid = task.shim.shim_pid
    await task.shim.close()
    await rig.manager.close()
    task.io.close()
    await rig.events.close()

    events = EventServer(rig.events.path)
    await events.start()
    rig.events, rig.sub = events, events.subscribe(NS)
    manager = ShimManager(namespace=NS, events_address=events.path)
    rig.manager = manager
    shim = await manager.load(cid, bundle)
    task.shim = shim
    assert shim.shim_pid == shim_pid and shim.address == (bundle / "address").read_text()
    io = ProcessIO.open(bundle / "io", stdin=True, create=False)
    task.io = io
    out = OutputCapture()
    await io.start(out.write)
    await io.write_stdin(b"again\n")
    await until(lambda: out.output(Stream.STDOUT) == b"got again\n")
    state = await shim.client.state(cid)
    assert state.status is TaskStatus.RUNNING

    waiter = asyncio.create_task(shim.client.wait(cid))
    await shim.client.kill(cid, signal.SIGKILL)
    assert (await waiter).exit_status == 137
    # The shim's publisher reconnects to the new events endpoint by itself.
    assert (await rig.event(_exit_of(cid))).event.exit_status == 137  # type: ignore[union-attr]
    await rig.finish(task)


async def test_pod_grouping_shares_one_shim(rig: Rig) -> None:
    pod = {"io.kubernetes.cri.sandbox-id": f"pod-{rig.token}"}
    first = await rig.run("g1", ["sleep", "1000"], annotations=pod)
    second = await rig.run("g2", ["sleep", "1000"], annotations=pod)
    assert first.shim.address == second.shim.address
    assert first.shim.shim_pid == second.shim.shim_pid
    assert first.shim.client is second.shim.client  # one connection per shim
    shim_pid = first.shim.shim_pid

    await first.client.kill(first.cid, signal.SIGKILL)
    await first.client.wait(first.cid)
    await rig.finish(first)
    # The shim still serves the second task.
    assert proc_state(shim_pid) not in (None, "Z")
    assert (await second.client.state(second.cid)).status is TaskStatus.RUNNING

    await second.client.kill(second.cid, signal.SIGKILL)
    await second.client.wait(second.cid)
    await rig.finish(second)
    assert proc_state(shim_pid) in (None, "Z")


async def test_dead_shim_is_cleaned_up_with_shim_delete(rig: Rig) -> None:
    task = await rig.run("dead", ["sleep", "1000"])
    cid, bundle = task.cid, task.bundle
    container_pid = (await task.client.state(cid)).pid
    os.kill(task.shim.shim_pid, signal.SIGKILL)
    await task.shim.wait_closed()
    await task.shim.close()
    task.io.close()
    with pytest.raises(ShimGone):
        await rig.manager.load(cid, bundle)
    exit_info = await rig.manager.delete_dead(cid, bundle)
    assert (exit_info.pid, exit_info.exit_status) == (container_pid, 137)
    assert not _mounts_under(bundle)
    await until(lambda: proc_state(container_pid) in (None, "Z"))
    task.io.remove()
    shutil.rmtree(bundle)
    rig.tasks.remove(task)


async def test_start_failure_leaves_nothing(rig: Rig) -> None:
    cid, bundle = rig.bundle("bad", ["sleep", "1"])
    with pytest.raises(ValueError, match="named by its task id"):
        await rig.manager.start("other", bundle, rig.binary)
    broken = rig.base / "broken-shim"
    broken.write_text("#!/bin/sh\necho 'no such runtime' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(ShimCommandError, match="no such runtime"):
        await rig.manager.start(cid, bundle, str(broken))
    assert sorted(os.listdir(bundle)) == ["config.json"]  # our log FIFO is gone too
    shutil.rmtree(bundle)
