"""Kill at any point: the server is SIGKILLed inside each mutating RPC at several points
(``cri_async.faults``: before and after helper programs, database commits, blob and
snapshot commits), restarted, and then every object and every host resource is checked
against what the server reports: nothing lost (a running container is still running,
with its conmon, and its exit is still recorded), nothing leaked (mounts, conmons,
bundles, pod dirs, namespace pins, pause processes, IPAM leases, veths, CNI cache
entries, cgroups, writable layers, exit files, blobs, snapshots). Then the interrupted
call is retried as kubelet would, and must converge.

One server process lives from one crash to the next: each case makes what it needs with
other RPCs, arms the crash file for exactly one call, and checks after the restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from cri_async import faults, linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.registry.manifest import chain_ids
from tests.support import images as im
from tests.support.poll import until
from tests.support.prereq import need_binary
from tests.support.registry import LocalRegistry

from . import test_cni
from .conftest import require
from .test_cni import PLUGIN_DIR, PodNet
from .test_restart import Proc

pytestmark = [pytest.mark.root, pytest.mark.registry, pytest.mark.subprocess]

tnet = test_cni.tnet  # the fixture: its own bridge and subnet, torn down afterwards

NAMESPACE = "crash"
CGROUP_HIERARCHY = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class Case:
    rpc: str
    point: str  # "<point>#<n>", as cri_async.faults counts them within the call
    why: str  # what the crash leaves half done

    def __str__(self) -> str:
        return f"{self.rpc}:{self.point}"


CASES = (
    Case("PullImage", "blob#2", "some blobs committed, no image record"),
    Case("PullImage", "snapshot#1", "a layer unpacked, no image record"),
    Case("PullImage", "committed#1", "the image recorded, the call unanswered"),
    Case("RunPodSandbox", "committed#1", "an intent record, nothing on the host"),
    Case("RunPodSandbox", "exec bridge#1", "pins, pause process, pod files; no network"),
    Case("RunPodSandbox", "exited portmap#1", "network attached (an IP leased), record CREATING"),
    Case("RunPodSandbox", "committed#2", "the pod ready, the call unanswered"),
    Case("CreateContainer", "exec conmon#1", "rootfs mounted, bundle written, no conmon"),
    Case("CreateContainer", "commit#2", "conmon and the runtime's create done, record CREATING"),
    Case("StartContainer", "exec runc#1", "about to start"),
    Case("StartContainer", "exited runc#1", "the process started, the record still CREATED"),
    Case("StopContainer", "exited runc#1", "the process killed, its exit not recorded"),
    Case("RemoveContainer", "exited runc#1", "runtime state deleted, bundle and mount left"),
    Case("RemoveContainer", "commit#1", "host side removed, the record still there"),
    Case("StopPodSandbox", "exited runc#1", "containers killed, the network attached"),
    Case("StopPodSandbox", "exited bridge#1", "the network half released"),
    Case("StopPodSandbox", "commit#1", "pod released, the record still READY"),
    Case("RemovePodSandbox", "exited bridge#1", "containers killed, the network half released"),
    Case("RemovePodSandbox", "exited runc#2", "a container deleted, its record left"),
    Case("RemovePodSandbox", "commit#3", "everything removed but the pod's record"),
)


# -- the node under test -----------------------------------------------------------------------


@dataclass
class Node:
    """The server process, its paths, the test's network and registry, and what the test
    knows it made."""

    proc: Proc
    tnet: PodNet
    registry: LocalRegistry
    run_root: Path
    state_root: Path
    crash_file: Path
    cgroup_root: str
    busybox: str
    images: dict[str, im.BuiltImage] = field(default_factory=dict)  # ref -> image
    cli: CRIClient | None = None
    pods_made: int = 0

    @property
    def handler_root(self) -> Path:
        return self.run_root / "runc" / "default"

    @property
    def client(self) -> CRIClient:
        assert self.cli is not None
        return self.cli

    async def start(self) -> None:
        self.cli = await self.proc.start()

    async def crash(self, case: Case, call: Awaitable[object]) -> None:
        """Arm ``case`` for one call, make it, and see the server die at that point."""
        self.crash_file.write_text(f"{case.rpc}:{case.point}")
        try:
            with pytest.raises(Exception):  # noqa: B017,PT011  (the connection goes away)
                await call
        finally:
            self.crash_file.write_text("")
        assert self.proc.proc is not None
        rc = self.proc.proc.wait(20)
        assert rc == -9, f"{case}: the server exited {rc}, not by SIGKILL:\n{self.tail()}"
        points = [ln for ln in self.proc.log().splitlines() if "crash point " in ln]
        assert points and points[-1].endswith(f"crash point {case}"), (
            f"{case}: the server died elsewhere; last points: {points[-5:]}"
        )
        self.client.close()
        self.cli = None

    def tail(self) -> str:
        return "\n".join(self.proc.log().splitlines()[-30:])

    def pod_config(self, name: str) -> pb.PodSandboxConfig:
        cfg = pod_config(name, NAMESPACE, uid=f"uid-{name}")
        cfg.linux.security_context.namespace_options.pid = pb.POD  # a pause process
        cfg.linux.cgroup_parent = f"/{self.cgroup_root}/{name}"
        return cfg

    async def new_pod(self) -> tuple[str, pb.PodSandboxConfig]:
        self.pods_made += 1
        cfg = self.pod_config(f"p{self.pods_made}")
        return await self.client.run_pod(cfg), cfg

    async def new_container(self, pod: str, cfg: pb.PodSandboxConfig, name: str) -> str:
        ccfg = container_config(name, self.busybox, command=["sleep", "100000"])
        return await self.client.create_container(pod, ccfg, cfg)

    async def running(self) -> tuple[str, pb.PodSandboxConfig, str]:
        pod, cfg = await self.new_pod()
        cid = await self.new_container(pod, cfg, "run")
        await self.client.start_container(cid)
        return pod, cfg, cid

    async def remove_pod(self, pod: str) -> None:
        await self.client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))


# -- what the server says, what the host has ---------------------------------------------------


@dataclass(frozen=True)
class ServerView:
    pods: dict[str, int]  # id -> state
    pod_names: dict[str, str]  # name -> id
    containers: dict[str, tuple[int, str, str]]  # id -> (state, pod id, name)
    images: dict[str, str]  # ref -> image id


async def server_view(node: Node) -> ServerView:
    rt = node.client.runtime
    pods = (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items
    ctrs = (await rt.ListContainers(pb.ListContainersRequest())).containers
    images: dict[str, str] = {}
    for ref in node.images:
        st = await node.client.images.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))
        )
        if st.image.id:
            images[ref] = st.image.id
    return ServerView(
        pods={p.id: p.state for p in pods},
        pod_names={p.metadata.name: p.id for p in pods},
        containers={c.id: (c.state, c.pod_sandbox_id, c.metadata.name) for c in ctrs},
        images=images,
    )


def _ls(d: Path) -> set[str]:
    try:
        return set(os.listdir(d))
    except FileNotFoundError:
        return set()


def _processes(comm: str) -> dict[int, tuple[bytes, str]]:
    """pid -> (cmdline, cgroup text) of every process named ``comm``."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != comm:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        out[int(entry)] = (cmdline, cgroup)
    return out


def problems(node: Node, view: ServerView, interrupted: str = "") -> list[str]:
    """Every difference between the host and what the server reports. The pod named
    ``interrupted`` and its containers are exempt from the "missing" checks: the crash cut
    a call on them short, so their host side may be half made or half released (the
    retry completes it); nothing may ever exist that no listed object owns."""
    out: list[str] = []
    exempt = {i for name, i in view.pod_names.items() if name == interrupted}
    exempt |= {c for c, (_, p, _) in view.containers.items() if p in exempt}
    pods = set(view.pods)
    ready = {p for p, st in view.pods.items() if st == pb.SANDBOX_READY}
    ctrs = set(view.containers)
    live = {c for c, (st, _, _) in view.containers.items() if st != pb.CONTAINER_EXITED}
    running = {c for c, (st, _, _) in view.containers.items() if st == pb.CONTAINER_RUNNING}

    def extra(what: str, have: set[str], allowed: set[str]) -> None:
        if have - allowed:
            out.append(f"leaked {what}: {sorted(have - allowed)}")

    def missing(what: str, have: set[str], needed: set[str]) -> None:
        if needed - have:
            out.append(f"missing {what}: {sorted(needed - have)}")

    root = node.handler_root
    # Pods: their directories, namespace pins, CNI cache, leases, veths, pause, cgroups.
    pod_dirs = _ls(root / "pods")
    extra("pod dirs", pod_dirs, pods)
    missing("pod dirs", pod_dirs, pods - exempt)
    pins = {f"{k}/{p}" for k in ("net", "ipc", "uts", "pid") for p in _ls(node.run_root / "ns" / k)}
    extra("namespace pins", pins, {f"{k}/{p}" for k in ("net", "ipc", "uts", "pid") for p in pods})
    missing("net pins", pins, {f"net/{p}" for p in ready - exempt})
    cached = {f.removesuffix(".json") for f in _ls(node.run_root / "cni" / "cache")}
    extra("CNI cache entries", cached, pods)
    lease_dir = node.tnet.data_dir / node.tnet.name
    leases = {
        (lease_dir / f).read_text().split()[0]
        for f in node.tnet.leases()
        if (lease_dir / f).stat().st_size
    }
    extra("IP leases", leases, ready)
    missing("IP leases", leases, ready - exempt)
    veths = len(node.tnet.veths())
    if not len(ready - exempt) <= veths <= len(ready):
        out.append(f"{veths} veths on the bridge, {len(ready)} ready pods")
    ours = f":/{node.cgroup_root}/"
    name_of = {name: pid for name, pid in view.pod_names.items()}
    pause_pods = set()
    for pid, (_, cgroup) in _processes("catatonit").items():
        line = next((x for x in cgroup.splitlines() if ":memory:" in x), "")
        if ours in line:
            pod_name = line.split(ours, 1)[1].split("/")[0]
            pause_pods.add(name_of.get(pod_name, f"unknown pod {pod_name} (pid {pid})"))
    extra("pause processes", pause_pods, ready)
    missing("pause processes", pause_pods, ready - exempt)
    cg = CGROUP_HIERARCHY / node.cgroup_root
    pod_cgroups = {name_of.get(d, f"unknown pod {d}") for d in _ls(cg) if (cg / d).is_dir()}
    extra("pod cgroups", pod_cgroups, pods)
    ctr_cgroups = {c for d in _ls(cg) if (cg / d).is_dir() for c in _ls(cg / d) if len(c) == 64}
    extra("container cgroups", ctr_cgroups, ctrs)
    # Containers: bundles, rootfs mounts, conmons, writable layers, exit files, sockets.
    bundles = _ls(root / "containers")
    extra("bundles", bundles, ctrs)
    missing("bundles", bundles, ctrs - exempt)
    extra("writable layers", _ls(node.state_root / "containers"), ctrs)
    extra("exit files", _ls(root / "exits"), ctrs)
    extra("attach socket links", _ls(node.run_root / "s"), ctrs)
    conmons: set[str] = set()
    for _, (cmdline, _) in _processes("conmon").items():
        argv = cmdline.split(b"\0")
        if str(node.run_root).encode() in cmdline and b"-c" in argv:
            conmons.add(argv[argv.index(b"-c") + 1].decode())
    extra("conmons", conmons, live)
    missing("conmons", conmons, running - exempt)
    expected_mounts = {str(node.run_root / "ns")}
    expected_mounts |= {str(node.run_root / "ns" / p) for p in pins}
    expected_mounts |= {str(root / "pods" / p / "shm") for p in pods}
    expected_mounts |= {str(root / "containers" / c / "rootfs") for c in ctrs}
    mounts = {m[0] for m in linux.mountinfo()}
    ours_mounts = {m for m in mounts if m.startswith((f"{node.run_root}/", f"{node.state_root}/"))}
    extra("mounts", ours_mounts, expected_mounts)
    rootfs = {str(root / "containers" / c / "rootfs") for c in ctrs - exempt}
    missing("rootfs mounts", mounts, rootfs)
    # Images: blobs and snapshots of images the server does not list, and leftovers.
    listed = [node.images[ref] for ref in view.images]
    blobs = {f"sha256:{b}" for b in _ls(node.state_root / "content" / "blobs" / "sha256")}
    extra(
        "blobs",
        blobs,
        {d for i in listed for d in (i.manifest_digest, *(b.digest for b in i.blobs))},
    )
    snaps = _ls(node.state_root / "snapshots")
    chains = {
        c.split(":", 1)[1] for i in listed for c in chain_ids(tuple(x.diff_id for x in i.layers))
    }
    extra("snapshots", snaps, chains)
    extra("downloads", _ls(node.state_root / "content" / "ingest"), set())
    return out


async def consistent(node: Node, what: str, interrupted: str = "") -> ServerView:
    """The server's view once the host matches it (startup's sweep runs in the background,
    so a restarted server may need a moment)."""
    last: list[str] = []
    seen: ServerView | None = None

    async def check() -> bool:
        nonlocal last, seen
        seen = await server_view(node)
        last = problems(node, seen, interrupted)
        return not last

    try:
        await until(check, timeout=20, interval=0.1, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: {last}\n{node.tail()}") from None
    assert seen is not None
    return seen


# -- the cases ---------------------------------------------------------------------------------


async def run_case(node: Node, case: Case, keep: dict[str, str]) -> None:
    cli = node.client
    rt = cli.runtime
    n = node.pods_made
    if case.rpc == "PullImage":
        ref = node.registry.ref(f"crash/img{n}")
        node.pods_made += 1
        built = im.busybox_image(im.layer([im.File("marker", f"image {n}".encode())]))
        im.push(node.registry, f"crash/img{n}", built)
        node.images[ref] = built
        await node.crash(case, cli.pull(ref))
        await node.start()
        await consistent(node, f"{case}: after the restart")
        await node.client.pull(ref)  # kubelet pulls again
        view = await consistent(node, f"{case}: after the retry")
        assert ref in view.images
        return
    if case.rpc == "RunPodSandbox":
        node.pods_made += 1
        cfg = node.pod_config(f"p{node.pods_made}")
        await node.crash(case, cli.run_pod(cfg))
        await node.start()
        view = await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        pod = view.pod_names.get(cfg.metadata.name)
        if pod is None:  # never answered: kubelet runs it again
            pod = await node.client.run_pod(cfg)
        assert (await consistent(node, f"{case}: retried")).pods[pod] == pb.SANDBOX_READY
        cid = await node.new_container(pod, cfg, "after")
        await node.client.start_container(cid)
        await consistent(node, f"{case}: a container in it")
        await node.remove_pod(pod)
        return
    if case.rpc == "CreateContainer":
        pod, cfg = await node.new_pod()
        ccfg = container_config("c", node.busybox, command=["sleep", "100000"])
        await node.crash(case, cli.create_container(pod, ccfg, cfg))
        await node.start()
        view = await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        found = [c for c, (_, p, name) in view.containers.items() if p == pod and name == "c"]
        cid = found[0] if found else await node.client.create_container(pod, ccfg, cfg)
        await node.client.start_container(cid)
        assert (await consistent(node, f"{case}: retried")).containers[cid][0] == (
            pb.CONTAINER_RUNNING
        )
        await node.remove_pod(pod)
        return
    if case.rpc == "StartContainer":
        pod, cfg = await node.new_pod()
        cid = await node.new_container(pod, cfg, "c")
        await node.crash(case, cli.start_container(cid))
        await node.start()
        view = await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        if view.containers[cid][0] == pb.CONTAINER_CREATED:
            await node.client.start_container(cid)  # kubelet starts it again
        view = await consistent(node, f"{case}: retried")
        assert view.containers[cid][0] == pb.CONTAINER_RUNNING
        await stop_and_check_exit(node, cid)
        await node.remove_pod(pod)
        return
    pod, cfg, cid = await node.running()
    if case.rpc == "StopContainer":
        await node.crash(case, rt.StopContainer(pb.StopContainerRequest(container_id=cid)))
        await node.start()
        await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        await node.client.runtime.StopContainer(pb.StopContainerRequest(container_id=cid))
        view = await consistent(node, f"{case}: retried")
        assert view.containers[cid][0] == pb.CONTAINER_EXITED
        assert (await node.client.container_status(cid)).exit_code == 137
    elif case.rpc == "RemoveContainer":
        await node.crash(case, rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid)))
        await node.start()
        await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        await node.client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        assert cid not in (await consistent(node, f"{case}: retried")).containers
    elif case.rpc == "StopPodSandbox":
        await node.crash(case, rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod)))
        await node.start()
        await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        await node.client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
        view = await consistent(node, f"{case}: retried")
        assert view.pods[pod] == pb.SANDBOX_NOTREADY
        assert view.containers[cid][0] == pb.CONTAINER_EXITED
    elif case.rpc == "RemovePodSandbox":
        await node.crash(case, rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod)))
        await node.start()
        await consistent(node, f"{case}: after the restart", cfg.metadata.name)
        await node.remove_pod(pod)
        view = await consistent(node, f"{case}: retried")
        assert pod not in view.pods and cid not in view.containers
        return
    else:
        raise AssertionError(f"no scenario for {case}")
    await node.remove_pod(pod)


async def stop_and_check_exit(node: Node, cid: str) -> None:
    """The container is tracked: stopping it records its exit."""
    await node.client.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    st = await node.client.container_status(cid)
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 137)


async def check_kept(node: Node, keep: dict[str, str], view: ServerView, case: Case) -> None:
    """What existed before the crash is still there, the same: nothing lost."""
    assert view.pods.get(keep["pod"]) == pb.SANDBOX_READY, f"{case}: the kept pod"
    assert view.containers.get(keep["run"], (None,))[0] == pb.CONTAINER_RUNNING, (
        f"{case}: the kept running container"
    )
    assert view.containers.get(keep["done"], (None,))[0] == pb.CONTAINER_EXITED
    assert view.images.get(node.busybox), f"{case}: the pulled image"
    pid = int((node.handler_root / "containers" / keep["run"] / "pidfile").read_text())
    assert pid == int(keep["pid"]) and Path(f"/proc/{pid}").exists(), f"{case}: its process"


@pytest_asyncio.fixture
async def node(tnet: PodNet, tmp_path: Path) -> AsyncIterator[Node]:
    require("runc")
    need_binary("catatonit", "installed by `make test`")
    tnet.write(tnet.conflist())
    run_root = Path(f"/run/crk{os.getpid() % 10000}")
    crash_file = tmp_path / "crash-at"
    crash_file.write_text("")
    proc = Proc(
        tmp_path,
        images_backend="registry",
        runtime="runc",
        run_root=run_root,
        network=f'conf_dirs = ["{tnet.conf_dir}"]\nbin_dirs = ["{PLUGIN_DIR}"]',
        env={faults.ENV: str(crash_file)},
        log_level="info",
    )
    with LocalRegistry() as reg:
        busybox = im.busybox_image(cmd=("sh",))
        im.push(reg, "crash/busybox", busybox)
        n = Node(
            proc=proc,
            tnet=tnet,
            registry=reg,
            run_root=run_root,
            state_root=tmp_path / "state",
            crash_file=crash_file,
            cgroup_root=f"crk{os.getpid()}",
            busybox=reg.ref("crash/busybox"),
        )
        n.images[n.busybox] = busybox
        try:
            yield n
        finally:
            crash_file.write_text("")
            if proc.proc is None or proc.proc.poll() is not None:
                n.cli = await proc.start()
            for p in (await n.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items:
                await n.remove_pod(p.id)
            n.client.close()
            proc.terminate()
            proc.sock.unlink(missing_ok=True)
            linux.umount(str(run_root / "ns"))
            shutil.rmtree(run_root, ignore_errors=True)
            for d in (CGROUP_HIERARCHY.parent).glob(f"*/{n.cgroup_root}"):
                d.rmdir()  # the tree's root is ours; what is below went with the pods


async def test_kill_inside_each_mutating_rpc_loses_and_leaks_nothing(node: Node) -> None:
    await node.start()
    await node.client.pull(node.busybox)
    pod, cfg, run = await node.running()
    done = await node.client.create_container(
        pod, container_config("done", node.busybox, command=["sh", "-c", "exit 3"]), cfg
    )
    await node.client.start_container(done)
    pid = (node.handler_root / "containers" / run / "pidfile").read_text().strip()
    keep = {"pod": pod, "run": run, "done": done, "pid": pid}

    async def exited() -> bool:
        return (await node.client.container_status(done)).state == pb.CONTAINER_EXITED

    await until(exited, what="the 'done' container to exit")
    for case in CASES:
        await run_case(node, case, keep)
        view = await consistent(node, f"{case}: after its cleanup")
        await check_kept(node, keep, view, case)
    # The kept running container is still tracked after all these restarts.
    await stop_and_check_exit(node, run)
    await node.remove_pod(pod)
    view = await consistent(node, "at the end")
    assert not view.pods and not view.containers
