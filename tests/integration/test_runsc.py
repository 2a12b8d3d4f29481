"""gVisor (runsc) pods: a kubelet-style sequence through the CRI on real runsc + conmon.

The pod is one gVisor sandbox (an infra container running a static pause binary), and its
containers join it; logs, exit codes, exec, stop and remove go through conmon and the
runsc backend's holder (cri_async/backends/runsc.py). Without root, runsc, conmon or a
static pause binary the tests are skipped, or fail with CI=true.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib import GRPCError, Status

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.backends.infra import find_infra_binary
from cri_async.backends.runsc import RunscBackend
from cri_async.backends.runsclimits import exec_applies_seccomp
from cri_async.backends.runscspec import wrapper_script
from cri_async.client import container_config, pod_config
from cri_async.config import Config, HandlerConfig, ImagesConfig, StateConfig
from cri_async.logs.crilog import Stream, join_records, parse_lines
from cri_async.pods.host import DEFAULT_CGROUP_PARENT
from cri_async.testing import CRIServer
from tests.support.poll import until
from tests.support.prereq import need_file, unavailable
from tests.support.procs import processes_mentioning

from .conftest import require, wait_exit, wait_log

pytestmark = [pytest.mark.root, pytest.mark.registry]

CGROUP_PARENT = DEFAULT_CGROUP_PARENT  # where pods that name no cgroup parent go


def require_runsc() -> None:
    require("runsc")
    if find_infra_binary() is None:
        unavailable("needs a static pause binary (apt-get install catatonit)")


class Timings:
    def __init__(self) -> None:
        self.items: list[tuple[str, float]] = []

    def add(self, what: str, since: float) -> None:
        self.items.append((what, (time.perf_counter() - since) * 1000))

    def report(self) -> str:
        return ", ".join(f"{w} {ms:.0f} ms" for w, ms in self.items)


@pytest.fixture
def timings(request: pytest.FixtureRequest) -> Iterator[Timings]:
    t = Timings()
    yield t
    if t.items:
        print(f"\n{request.node.name}: {t.report()}")


@contextlib.asynccontextmanager
async def runsc_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tag: str,
    network: str = "host",
    infra: str = "",
) -> AsyncIterator[tuple[CRIServer, Path]]:
    """A CRI server whose default handler is runsc; on the way out every pod is removed and
    the host must be clean (no runsc state, mounts or processes of this run root)."""
    require_runsc()
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="runsc", network=network, infra_binary=infra)},
        images=ImagesConfig(backend="registry"),
    )
    srv = CRIServer(tmp_path, config=cfg)
    # Short run root: conmon's attach socket path must fit in sun_path.
    run_root = Path(f"/run/crt{os.getpid() % 10000}{tag}")
    srv.config = dataclasses.replace(
        srv.config,
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )
    try:
        async with srv:
            backend = srv.server.backends[""] if srv.server else None
            assert isinstance(backend, RunscBackend)
            try:
                yield srv, run_root
            finally:
                # Also after a failure: leave nothing running on the host.
                for p in (
                    await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
                ).items:
                    await srv.client.runtime.RemovePodSandbox(
                        pb.RemovePodSandboxRequest(pod_sandbox_id=p.id)
                    )
            assert not list(Path(backend.cli.root).iterdir()), "runsc state left behind"
    finally:
        linux.umount(str(run_root / "ns"))  # the pin directory's own private bind mount
        mounts = [m[0] for m in linux.mountinfo() if m[0].startswith(str(run_root))]
        if not mounts:
            shutil.rmtree(run_root, ignore_errors=True)
    assert not mounts
    assert not [m for m in linux.mountinfo() if m[0].startswith(str(tmp_path))]
    # Reaped promptly (not by a slow PID 1): no sandbox, gofer, holder or conmon is left.
    await until(lambda: not processes_mentioning(str(run_root)), timeout=5, interval=0.05)


@pytest_asyncio.fixture
async def rs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[CRIServer, Path]]:
    async with runsc_server(tmp_path, monkeypatch, "g") as s:
        yield s


def runsc_state(run_root: Path, cid: str) -> dict[str, object]:
    roots = [p for p in run_root.glob("*/default/state") if p.is_dir()]
    assert len(roots) == 1
    out = subprocess.run(
        ["runsc", f"--root={roots[0]}", "state", cid], capture_output=True, check=True
    ).stdout
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def holders(run_root: Path) -> list[int]:
    """Holder processes (the wrapper's --cri-async-hold mode) of this test's handler."""
    return [
        p
        for p in processes_mentioning("--cri-async-hold")
        if p in processes_mentioning(str(run_root))
    ]


def cgroup_dirs(rel: str) -> list[Path]:
    return [h / rel.lstrip("/") for h in Path("/sys/fs/cgroup").iterdir() if (h / rel).is_dir()]


async def test_kubelet_sequence_on_runsc(
    rs: tuple[CRIServer, Path], busybox_ref: str, tmp_path: Path, timings: Timings
) -> None:
    srv, run_root = rs
    cli = srv.client
    image_id = await cli.pull(busybox_ref)
    logs = tmp_path / "pods"
    pcfg = pod_config("web", log_directory=str(logs))
    t = time.perf_counter()
    pod = await cli.run_pod(pcfg)
    timings.add("RunPodSandbox", t)
    infra = runsc_state(run_root, pod)
    assert infra["status"] == "running"
    annotations = infra["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["io.kubernetes.cri.container-type"] == "sandbox"
    assert annotations["io.kubernetes.cri.sandbox-id"] == pod

    app = container_config(
        "app",
        busybox_ref,
        command=[
            "sh",
            "-c",
            "echo hello; echo oops >&2; hostname; trap 'echo term; exit 3' TERM;"
            " echo pong | nc -l -p 8080; while :; do sleep 0.1; done",
        ],
        log_path="app/0.log",
    )
    t = time.perf_counter()
    cid = await cli.create_container(pod, app, pcfg)
    timings.add("CreateContainer", t)
    t = time.perf_counter()
    await cli.start_container(cid)
    timings.add("StartContainer", t)
    st = await cli.container_status(cid)
    assert st.state == pb.CONTAINER_RUNNING and st.image_id == image_id
    # It runs inside the pod's sandbox, not in a sandbox of its own.
    sub = runsc_state(run_root, cid)
    assert sub["pid"] == infra["pid"] and sub["status"] == "running"

    # Logs in CRI format at the log path, both streams, from inside the sandbox.
    out = await wait_log(logs / "app/0.log", {Stream.STDOUT: b"web\n"})
    assert out[Stream.STDOUT] == b"hello\nweb\n" and out[Stream.STDERR] == b"oops\n"

    t = time.perf_counter()
    r = await cli.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; id -u; exit 3"], timeout=10)
    timings.add("ExecSync", t)
    assert (r.exit_code, r.stdout, r.stderr) == (3, b"out\n0\n", b"err\n")
    t = time.perf_counter()
    with pytest.raises(GRPCError) as err:
        await cli.exec_sync(cid, ["sleep", "37"], timeout=1)
    timings.add("ExecSync timeout=1", t)
    assert err.value.status is Status.DEADLINE_EXCEEDED

    # The timed-out process inside the sandbox was killed too, not only runsc on the host.
    async def sleep_gone() -> bool:
        return b"sleep 37" not in (await cli.exec_sync(cid, ["ps"], timeout=10)).stdout

    await until(sleep_gone, timeout=5, interval=0.1, what="the timed-out 'sleep 37' to die")

    # A second container of the pod reaches the first over the pod's loopback.
    client = container_config(
        "client",
        busybox_ref,
        command=["sh", "-c", "nc -w 5 127.0.0.1 8080 </dev/null; exit 7"],
        log_path="client/0.log",
    )
    t = time.perf_counter()
    second = await cli.create_container(pod, client, pcfg)
    await cli.start_container(second)
    timings.add("second container create+start", t)
    st = await wait_exit(cli, second)
    assert (st.exit_code, st.reason) == (7, "Error")
    out2 = join_records(parse_lines((logs / "client/0.log").read_bytes()))
    assert out2[Stream.STDOUT] == b"pong\n"
    assert runsc_state(run_root, second)["status"] == "stopped"

    # Stop: the signal first (the trap exits 3), then SIGKILL for one that ignores it.
    t = time.perf_counter()
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    timings.add("StopContainer (TERM)", t)
    st = await cli.container_status(cid)
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 3)
    out = join_records(parse_lines((logs / "app/0.log").read_bytes()))
    assert out[Stream.STDOUT].endswith(b"term\n")

    stubborn = await cli.create_container(
        pod,
        container_config(
            "stubborn",
            busybox_ref,
            command=["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        ),
        pcfg,
    )
    await cli.start_container(stubborn)
    t = time.perf_counter()
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1))
    timings.add("StopContainer (ignored TERM, timeout 1)", t)
    st = await cli.container_status(stubborn)
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 137)

    # Created but never started: its holder waits for the word and must go with it.
    idle = await cli.create_container(
        pod, container_config("idle", busybox_ref, command=["true"]), pcfg
    )
    assert holders(run_root)

    t = time.perf_counter()
    for c in (cid, second, stubborn, idle):
        await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c))
    timings.add("RemoveContainer x4", t)
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    assert not holders(run_root)
    assert not list((run_root / "s").iterdir())  # conmon's socket links
    t = time.perf_counter()
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    timings.add("StopPodSandbox", t)
    t = time.perf_counter()
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    timings.add("RemovePodSandbox", t)
    assert not (await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    assert not cgroup_dirs(f"{CGROUP_PARENT}/pod-{pod[:16]}")


async def test_runsc_start_failure_resources_and_pod_removal(
    rs: tuple[CRIServer, Path], busybox_ref: str, tmp_path: Path, timings: Timings
) -> None:
    """A bad command is a StartError; resources go to the cgroup files; a RuntimeDefault
    seccomp profile does not stop a container; removing the pod removes running containers
    with it."""
    srv, _ = rs
    cli = srv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("misc")
    pod = await cli.run_pod(pcfg)

    bad = await cli.create_container(
        pod, container_config("bad", busybox_ref, command=["/no/such/binary"]), pcfg
    )
    with pytest.raises(GRPCError) as err:
        await cli.start_container(bad)
    assert err.value.status is Status.FAILED_PRECONDITION
    assert "runsc start failed" in str(err.value.message)
    st = await cli.container_status(bad)
    assert (st.state, st.reason) == (pb.CONTAINER_EXITED, "StartError")

    cfg = container_config(
        "c",
        busybox_ref,
        command=["sh", "-c", "grep Seccomp: /proc/self/status; exec sleep 1000"],
        log_path=str(tmp_path / "c.log"),
    )
    cfg.linux.security_context.seccomp.profile_type = pb.SecurityProfile.RuntimeDefault
    cfg.linux.resources.memory_limit_in_bytes = 96 << 20
    cid = await cli.create_container(pod, cfg, pcfg)
    await cli.start_container(cid)
    out = await wait_log(tmp_path / "c.log", {Stream.STDOUT: b"Seccomp"})
    assert out[Stream.STDOUT] == b"Seccomp:\t2\n"  # the profile is enforced (--oci-seccomp)
    version = subprocess.run(["runsc", "--version"], capture_output=True, text=True).stdout
    if exec_applies_seccomp(version.split()[2]):
        r = await cli.exec_sync(cid, ["grep", "Seccomp:", "/proc/self/status"], timeout=10)
        assert r.stdout == b"Seccomp:\t2\n"
    else:  # this runsc would exec without the profile: refused
        with pytest.raises(GRPCError) as err:
            await cli.exec_sync(cid, ["echo", "alive"], timeout=10)
        assert err.value.status is Status.FAILED_PRECONDITION

    t = time.perf_counter()
    await cli.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(
                memory_limit_in_bytes=128 << 20, cpu_shares=256, cpu_quota=50000, cpu_period=100000
            ),
        )
    )
    timings.add("UpdateContainerResources", t)
    rel = f"{CGROUP_PARENT}/pod-{pod[:16]}/{cid}"
    mem = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
    cpu = Path("/sys/fs/cgroup/cpu") / rel.lstrip("/")
    assert int((mem / "memory.limit_in_bytes").read_text()) == 128 << 20
    assert int((cpu / "cpu.shares").read_text()) == 256
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50000

    # A tty container is refused up front (runsc cannot give a joined container a tty).
    tty = container_config("tty", busybox_ref, command=["sh"])
    tty.tty = True
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, tty, pcfg)
    assert err.value.status is Status.INVALID_ARGUMENT

    t = time.perf_counter()
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    timings.add("RemovePodSandbox with a running container", t)
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    assert not cgroup_dirs(f"{CGROUP_PARENT}/pod-{pod[:16]}")


async def test_runsc_netstack_mode_with_pod_netns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busybox_ref: str, timings: Timings
) -> None:
    """network="sandbox": gVisor's own netstack, started under the /proc/sys/net workaround
    (see docs/runtimes.md), inside the pod's netns; loopback works between the pod's containers.
    The infra process here is busybox-static's sleep, the fallback for a missing catatonit."""
    need_file("/bin/busybox", "apt-get install busybox-static")
    async with runsc_server(
        tmp_path, monkeypatch, "n", network="sandbox", infra="/bin/busybox"
    ) as (srv, _):
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("net", log_directory=str(tmp_path / "logs"))
        t = time.perf_counter()
        pod = await cli.run_pod(pcfg)
        timings.add("RunPodSandbox (netstack)", t)
        server = await cli.create_container(
            pod,
            container_config(
                "srv",
                busybox_ref,
                command=["sh", "-c", "echo pong | nc -l -p 8080; sleep 1000"],
                log_path="srv.log",
            ),
            pcfg,
        )
        await cli.start_container(server)
        r = await cli.exec_sync(server, ["cat", "/proc/net/dev"], timeout=10)
        assert b"lo:" in r.stdout
        backend = srv.server.backends[""] if srv.server else None
        assert isinstance(backend, RunscBackend)
        assert (await backend.probe()).info["infra"].endswith("busybox sleep 2147483647")
        client = await cli.create_container(
            pod,
            container_config(
                "cl", busybox_ref, command=["nc", "-w", "5", "127.0.0.1", "8080"], log_path="c.log"
            ),
            pcfg,
        )
        await cli.start_container(client)
        st = await wait_exit(cli, client)
        assert st.exit_code == 0
        assert join_records(parse_lines((tmp_path / "logs/c.log").read_bytes()))[Stream.STDOUT] == (
            b"pong\n"
        )
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert not cgroup_dirs(f"{CGROUP_PARENT}/pod-{pod[:16]}")


def test_wrapper_script(tmp_path: Path) -> None:
    """No root needed: the generated wrapper is valid sh."""
    script = tmp_path / "w"
    script.write_text(wrapper_script("/usr/bin/runsc", ["--root=/run/a b", "--network=host"]))
    subprocess.run(["/bin/sh", "-n", str(script)], check=True)
    assert "'--root=/run/a b'" in script.read_text()


async def test_runsc_namespaces_hidden_paths_and_refusals(
    rs: tuple[CRIServer, Path], busybox_ref: str
) -> None:
    """What gVisor can do is done as asked (port 80, PID modes POD/CONTAINER/TARGET, masked
    and read-only paths); what it cannot is refused naming the field."""
    srv, _ = rs
    cli = srv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("feat")
    pcfg.linux.security_context.namespace_options.pid = pb.POD
    pod = await cli.run_pod(pcfg)

    def ctr(
        name: str, *command: str, pid: int = pb.CONTAINER, target: str = ""
    ) -> pb.ContainerConfig:
        cfg = container_config(name, busybox_ref, command=list(command) or ["sleep", "1000"])
        ns = cfg.linux.security_context.namespace_options
        ns.pid, ns.target_id = pid, target  # type: ignore[assignment]
        return cfg

    async def run(cfg: pb.ContainerConfig) -> str:
        cid = await cli.create_container(pod, cfg, pcfg)
        await cli.start_container(cid)
        return cid

    async def sh(cid: str, script: str) -> pb.ExecSyncResponse:
        return await cli.exec_sync(cid, ["sh", "-c", script], timeout=20)

    # Port 80 as root: the sandbox holds the default capabilities on the host network.
    web = await run(ctr("web", "httpd", "-f", "-p", "80", pid=pb.POD))
    r = await sh(web, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o args")
    assert "catatonit" in r.stdout.decode().splitlines()[0]  # pid POD: the pause is init
    assert b"httpd -f -p 80" in r.stdout
    own = await run(ctr("own", "sleep", "1001"))
    r = await sh(own, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o args")
    first, *procs = r.stdout.decode().splitlines()
    assert first.split() == ["sleep", "1001"]  # CONTAINER: a PID namespace of its own
    assert not [p for p in procs if "httpd -f" in p]
    joined = await run(ctr("joined", "sleep", "1002", pid=pb.TARGET, target=own))
    r = await sh(joined, "ps -o args")
    assert b"sleep 1001" in r.stdout and b"sleep 1002" in r.stdout and b"httpd" not in r.stdout

    hidden = ctr("hidden")
    hidden.linux.security_context.masked_paths.extend(["/etc/passwd", "/home", "/proc/kcore"])
    hidden.linux.security_context.readonly_paths.append("/tmp")
    hid = await run(hidden)
    r = await sh(hid, "wc -c < /etc/passwd; echo x >> /etc/passwd; echo rc=$?; mkdir /home/x")
    assert r.stdout.split() == [b"0", b"rc=1"] and r.exit_code != 0  # masked, read-only
    r = await sh(hid, "touch /tmp/x; echo rc=$?; echo /home/*")
    assert b"Read-only file system" in r.stderr and r.stdout.split() == [b"rc=1", b"/home/*"]

    seccomp = ctr("filtered")
    seccomp.linux.security_context.seccomp.profile_type = pb.SecurityProfile.RuntimeDefault
    filtered = await run(seccomp)
    with pytest.raises(GRPCError) as err:
        await sh(filtered, "true")
    assert err.value.status is Status.FAILED_PRECONDITION
    assert "seccomp" in str(err.value.message)

    # Recursive read-only (gVisor's only kind): the host's mounts below the volume too.
    vol = Path(str(srv.root)) / "rro"
    (vol / "sub").mkdir(parents=True)
    linux.mount("tmpfs", str(vol / "sub"), "tmpfs", 0, "size=1m")
    try:
        status = await cli.runtime.Status(pb.StatusRequest())
        assert [h.features.recursive_read_only_mounts for h in status.runtime_handlers] == [True]
        rro = ctr("rro")
        rro.mounts.append(
            pb.Mount(
                container_path="/v", host_path=str(vol), readonly=True, recursive_read_only=True
            )
        )
        r = await sh(await run(rro), "touch /v/x /v/sub/y 2>&1; echo rc=$?")
        assert r.stdout.count(b"Read-only file system") == 2
        plain = ctr("plain-ro")
        plain.mounts.append(pb.Mount(container_path="/v", host_path=str(vol), readonly=True))
        with pytest.raises(GRPCError) as err:  # its submount would not stay writable
            await cli.create_container(pod, plain, pcfg)
        assert err.value.status is Status.FAILED_PRECONDITION
        assert "recursive_read_only" in str(err.value.message)
    finally:
        linux.umount(str(vol / "sub"))

    refused_containers = {
        "privileged": lambda c: setattr(c.linux.security_context, "privileged", True),
        "add_capabilities NET_ADMIN": lambda c: (
            c.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
        ),
        "propagation BIDIRECTIONAL": lambda c: c.mounts.append(
            pb.Mount(
                container_path="/m", host_path="/tmp", propagation=pb.PROPAGATION_BIDIRECTIONAL
            )
        ),
    }
    for needle, change in refused_containers.items():
        cfg = ctr("refused")
        change(cfg)
        with pytest.raises(GRPCError) as err:
            await cli.create_container(pod, cfg, pcfg)
        assert err.value.status is Status.FAILED_PRECONDITION, needle
        assert needle in str(err.value.message) and "gVisor" in str(err.value.message)

    for field, mode in (("network", pb.NODE), ("pid", pb.NODE), ("ipc", pb.NODE)):
        bad = pod_config(f"host-{field}")
        setattr(bad.linux.security_context.namespace_options, field, mode)
        with pytest.raises(GRPCError) as err:
            await cli.run_pod(bad)
        assert err.value.status is Status.FAILED_PRECONDITION
        assert f"namespace_options.{field} NODE" in str(err.value.message)
    sysctl = pod_config("sysctl")
    sysctl.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    with pytest.raises(GRPCError) as err:
        await cli.run_pod(sysctl)
    assert "linux.sysctls (kernel.shm_rmid_forced)" in str(err.value.message)
    pods = (await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    assert [p.id for p in pods] == [pod]  # nothing made for the refused ones


async def test_runsc_restart_and_sandbox_death(
    rs: tuple[CRIServer, Path], busybox_ref: str, timings: Timings
) -> None:
    """Containers outlive a restart of cri-async (conmon and the holder keep them); an exit
    during the restart is recorded. When the pod's gVisor sandbox dies, its containers
    exit 255 with a message that says so."""
    srv, run_root = rs
    cli = srv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("restart")
    pod = await cli.run_pod(pcfg)
    long = await cli.create_container(
        pod, container_config("long", busybox_ref, command=["sleep", "1000"]), pcfg
    )
    short = await cli.create_container(
        pod,
        container_config("short", busybox_ref, command=["sh", "-c", "sleep 1; exit 4"]),
        pcfg,
    )
    for c in (long, short):
        await cli.start_container(c)
    t = time.perf_counter()
    await srv.stop()
    timings.add("server stop", t)
    # "short" exits while nobody is watching: conmon records it for the next server.
    await until(lambda: any(run_root.glob(f"*/default/exits/{short}")), what="short's exit")
    t = time.perf_counter()
    await srv.start()
    timings.add("server start (recover + reconcile)", t)
    cli = srv.client
    st = await cli.container_status(long)
    assert st.state == pb.CONTAINER_RUNNING
    r = await cli.exec_sync(long, ["echo", "still here"], timeout=10)
    assert r.stdout == b"still here\n"
    st = await wait_exit(cli, short)
    assert (st.exit_code, st.reason) == (4, "Error")

    pid = runsc_state(run_root, pod)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, 9)
    st = await wait_exit(cli, long)
    assert (st.exit_code, st.reason) == (255, "Error")
    assert "sandbox is gone" in st.message
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert not cgroup_dirs(f"{CGROUP_PARENT}/pod-{pod[:16]}")
