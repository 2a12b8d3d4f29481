"""Container features on real runtimes: users, mounts, read-only rootfs, capabilities,
seccomp, sysctls, host namespaces, resource limits in cgroup files, OOM, stop signals."""

import asyncio
import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.logs.crilog import Stream
from cri_async.testing import CRIServer
from tests.support import images as im
from tests.support.poll import until
from tests.support.procs import catches, processes_mentioning
from tests.support.registry import LocalRegistry

from .conftest import wait_exit, wait_log

pytestmark = [pytest.mark.root, pytest.mark.registry]


async def run(cli: CRIClient, pod: str, pcfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    cid = await cli.create_container(pod, cfg, pcfg)
    await cli.start_container(cid)
    return cid


async def sh(cli: CRIClient, cid: str, script: str) -> pb.ExecSyncResponse:
    return await cli.exec_sync(cid, ["sh", "-c", script], timeout=20)


async def test_security_and_mounts(rsrv: CRIServer, busybox_ref: str, tmp_path: Path) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("sec")
    pcfg.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    pod = await cli.run_pod(pcfg)
    host_dir = tmp_path / "data"
    host_dir.mkdir(mode=0o777)
    host_dir.chmod(0o777)  # writable for the container's uid 1234
    (host_dir / "in").write_text("from host")
    cfg = container_config("c", busybox_ref, command=["sleep", "1000"])
    cfg.linux.security_context.run_as_user.value = 1234
    cfg.linux.security_context.run_as_group.value = 5678
    cfg.linux.security_context.readonly_rootfs = True
    cfg.linux.security_context.capabilities.drop_capabilities.append("ALL")
    cfg.linux.security_context.capabilities.add_capabilities.append("NET_BIND_SERVICE")
    cfg.linux.security_context.seccomp.profile_type = pb.SecurityProfile.RuntimeDefault
    cfg.mounts.append(pb.Mount(container_path="/data", host_path=str(host_dir)))
    cfg.mounts.append(pb.Mount(container_path="/ro", host_path=str(host_dir), readonly=True))
    cfg.mounts.append(pb.Mount(container_path="/new", host_path=str(tmp_path / "created")))
    cid = await run(cli, pod, pcfg, cfg)

    r = await sh(cli, cid, "id -u; id -g")
    assert r.stdout.split() == [b"1234", b"5678"]
    r = await sh(cli, cid, "touch /rootfile 2>&1; echo rc=$?")
    assert b"Read-only file system" in r.stdout and b"rc=1" in r.stdout
    r = await sh(cli, cid, "cat /data/in; echo x > /data/out && echo ok")
    assert r.stdout == b"from hostok\n"
    assert (host_dir / "out").read_text() == "x\n"
    r = await sh(cli, cid, "echo y > /ro/out2 2>&1; echo rc=$?")
    assert b"rc=1" in r.stdout and not (host_dir / "out2").exists()
    assert (tmp_path / "created").is_dir()  # kubelet-style: missing host paths are created
    r = await sh(cli, cid, "grep CapBnd /proc/self/status")
    assert int(r.stdout.split()[1], 16) == 1 << 10  # only CAP_NET_BIND_SERVICE
    r = await sh(cli, cid, "grep Seccomp: /proc/self/status")
    assert r.stdout.split()[1] == b"2"  # filtered
    r = await sh(cli, cid, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert r.stdout.strip() == b"80"
    r = await sh(cli, cid, "cat /etc/hostname; grep -c nameserver /etc/resolv.conf")
    assert r.stdout.split()[0] == b"sec"
    masked = next(p for p in ("/proc/timer_list", "/proc/keys") if Path(p).exists())
    assert Path(masked).read_bytes()  # the host sees content ...
    r = await sh(cli, cid, f"wc -c < {masked}")
    assert r.stdout.strip() == b"0"  # ... the container a masked (empty) file


async def test_pod_without_hostname_gets_the_nodes(rsrv: CRIServer, busybox_ref: str) -> None:
    """A pod name longer than a host name may be (as critest's are) with no hostname set:
    the pod runs with the node's host name, as containerd does."""
    cli = rsrv.client
    await cli.pull(busybox_ref)
    name = "create-PodSandbox-for-container-8c3ad7e2-4b1f-4f51-9d1e-0a3c7d2b6e41"
    assert len(name) > 64
    pcfg = pod_config(name, hostname="")
    pod = await cli.run_pod(pcfg)
    cid = await run(cli, pod, pcfg, container_config("c", busybox_ref, command=["sleep", "1000"]))
    r = await sh(cli, cid, "hostname; cat /etc/hostname")
    node = os.uname().nodename.encode()
    assert r.stdout.split() == [node, node]


async def test_pod_and_target_pid_namespaces(rsrv: CRIServer, busybox_ref: str) -> None:
    """pid POD: the pod's containers share one PID namespace whose init is a pause process
    (as with containerd's sandbox container); TARGET joins another container's."""
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("pidns")
    pcfg.linux.security_context.namespace_options.pid = pb.POD
    pod = await cli.run_pod(pcfg)

    def ctr(name: str, mode: int, *, target: str = "") -> pb.ContainerConfig:
        cfg = container_config(name, busybox_ref, command=["sleep", f"{1000 + len(name)}"])
        ns = cfg.linux.security_context.namespace_options
        ns.pid, ns.target_id = mode, target  # type: ignore[assignment]
        return cfg

    a = await run(cli, pod, pcfg, ctr("a", pb.POD))
    b = await run(cli, pod, pcfg, ctr("bb", pb.POD))
    own = await run(cli, pod, pcfg, ctr("ccc", pb.CONTAINER))
    r = await sh(cli, b, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o args")
    init, *procs = r.stdout.decode().splitlines()
    assert "catatonit" in init
    assert "sleep 1001" in procs and "sleep 1002" in procs
    ns = {c: (await sh(cli, c, "readlink /proc/self/ns/pid")).stdout for c in (a, b, own)}
    assert ns[a] == ns[b] != ns[own]
    t = await run(cli, pod, pcfg, ctr("t", pb.TARGET, target=own))
    assert (await sh(cli, t, "readlink /proc/self/ns/pid")).stdout == ns[own]
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, ctr("u", pb.TARGET, target="0" * 64), pcfg)
    assert err.value.status is Status.NOT_FOUND

    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    for _ in range(250):  # killed; gone once the kernel has torn it down
        if not [p for p in processes_mentioning("catatonit") if _in_pod_cgroup(p, pod)]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the pod's pause process outlived StopPodSandbox")


def _in_pod_cgroup(pid: int, pod: str) -> bool:
    try:
        return f"pod-{pod[:16]}" in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


async def test_host_network_and_ipc(rsrv: CRIServer, busybox_ref: str) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("hostnet", host_network=True)
    pcfg.linux.security_context.namespace_options.ipc = pb.NODE
    pod = await cli.run_pod(pcfg)
    cid = await run(cli, pod, pcfg, container_config("c", busybox_ref, command=["sleep", "1000"]))
    r = await sh(cli, cid, "ls /sys/class/net; hostname")
    names = r.stdout.split()
    assert "lo" in [n.decode() for n in names] and len(names) > 2
    assert names[-1].decode() == os.uname().nodename
    host_net = os.readlink("/proc/self/ns/net")
    r = await sh(cli, cid, "readlink /proc/self/ns/net; readlink /proc/self/ns/ipc")
    net, ipc = r.stdout.decode().split()
    assert net == host_net and ipc == os.readlink("/proc/self/ns/ipc")


async def test_resources_update_oom_and_stop_signal(rsrv: CRIServer, busybox_ref: str) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("res")
    pod = await cli.run_pod(pcfg)
    cfg = container_config("c", busybox_ref, command=["sleep", "1000"])
    cfg.linux.resources.memory_limit_in_bytes = 64 << 20
    cfg.linux.resources.cpu_shares = 256
    cfg.linux.resources.oom_score_adj = -997  # kubelet's Guaranteed value: clamped, not fatal
    cid = await run(cli, pod, pcfg, cfg)
    r = await sh(cli, cid, "cat /proc/self/oom_score_adj")
    assert int(r.stdout) >= 0
    cg = Path("/sys/fs/cgroup/memory") / f"cri-async/pod-{pod[:16]}/{cid}"
    assert int((cg / "memory.limit_in_bytes").read_text()) == 64 << 20
    await cli.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_shares=512),
        )
    )
    assert int((cg / "memory.limit_in_bytes").read_text()) == 96 << 20
    cpu = Path("/sys/fs/cgroup/cpu") / f"cri-async/pod-{pod[:16]}/{cid}" / "cpu.shares"
    assert int(cpu.read_text()) == 512
    st = await cli.container_status(cid)
    assert st.resources.linux.memory_limit_in_bytes == 96 << 20

    await cli.runtime.UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod,
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=512 << 20, cpu_shares=2048),
            overhead=pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20, cpu_shares=64),
        )
    )
    pod_cg = Path("/sys/fs/cgroup/memory") / f"cri-async/pod-{pod[:16]}"
    assert int((pod_cg / "memory.limit_in_bytes").read_text()) == 544 << 20  # pod + overhead
    pod_cpu = Path("/sys/fs/cgroup/cpu") / f"cri-async/pod-{pod[:16]}" / "cpu.shares"
    assert int(pod_cpu.read_text()) == 2112

    hog = container_config(
        "hog", busybox_ref, command=["sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"]
    )
    hog.linux.resources.memory_limit_in_bytes = 32 << 20
    hid = await run(cli, pod, pcfg, hog)
    st = await wait_exit(cli, hid, timeout=60)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")

    # A shell as pid 1 ignores SIGTERM unless it traps it; the stop escalates to SIGKILL.
    quitter = container_config(
        "q", busybox_ref, command=["sh", "-c", "trap 'exit 42' QUIT; while :; do sleep 1; done"]
    )
    quitter.stop_signal = pb.SIGNAL_SIGQUIT
    qid = await run(cli, pod, pcfg, quitter)
    status = await cli.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=qid, verbose=True)
    )
    qpid = json.loads(status.info["info"])["pid"]
    await until(lambda: catches(qpid, signal.SIGQUIT), what="sh to install its QUIT trap")
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=qid, timeout=10))
    assert (await cli.container_status(qid)).exit_code == 42
    stubborn = await run(
        cli, pod, pcfg, container_config("s", busybox_ref, command=["sleep", "1000"])
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1))
    assert 0.9 <= loop.time() - t0 < 8
    assert (await cli.container_status(stubborn)).exit_code == 137


async def test_logs_reopen_and_checkpoint_unimplemented(
    rsrv: CRIServer, busybox_ref: str, tmp_path: Path
) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("logs", log_directory=str(tmp_path / "logs"))
    pod = await cli.run_pod(pcfg)
    cid = await run(
        cli,
        pod,
        pcfg,
        container_config(
            "c",
            busybox_ref,
            log_path="c/0.log",
            command=["sh", "-c", "while :; do echo tick; sleep 0.1; done"],
        ),
    )
    log = tmp_path / "logs/c/0.log"
    await wait_log(log, {Stream.STDOUT: b"tick\n"})
    log.rename(log.with_suffix(".1"))
    await cli.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert log.exists()  # created before the RPC returns, as kubelet's rotation expects
    await wait_log(log, {Stream.STDOUT: b"tick\n"})  # the new file gets the next lines
    with pytest.raises(GRPCError) as err:
        await cli.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid))
    assert err.value.status is Status.UNIMPLEMENTED and "CRIU" in str(err.value.message)


async def test_stats_and_metrics(rsrv: CRIServer, busybox_ref: str) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("stats", labels={"app": "stats"})
    pod = await cli.run_pod(pcfg)
    busy = container_config(
        "busy", busybox_ref, command=["sh", "-c", "while :; do :; done"], labels={"k": "v"}
    )
    cid = await run(cli, pod, pcfg, busy)
    # Read on demand: a container started a moment ago already has its numbers (critest's
    # "listing container stats" asks right after StartContainer).
    now = (await cli.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid))).stats
    assert now.cpu.timestamp > 0 and now.memory.timestamp > 0
    assert now.cpu.usage_core_nano_seconds.value > 0
    writer = ["sh", "-c", "dd if=/dev/zero of=/blob bs=1024 count=512 2>/dev/null; sleep 99"]
    idle = await run(cli, pod, pcfg, container_config("idle", busybox_ref, command=writer))

    async def blob_written() -> bool:
        return (await sh(cli, idle, "stat -c %s /blob")).stdout == b"524288\n"

    await until(blob_written, what="the 512 KiB /blob in idle's writable layer")
    assert rsrv.server is not None and rsrv.server.runtime.ctx.stats is not None
    cache = rsrv.server.runtime.ctx.stats
    await cache.refresh_now()
    await asyncio.sleep(0.5)  # the window the CPU rate is measured over
    await cache.refresh_now()

    one = (await cli.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid))).stats
    assert one.attributes.id == cid and one.attributes.labels["k"] == "v"
    assert one.cpu.usage_core_nano_seconds.value > 0
    assert one.cpu.usage_nano_cores.value > 100_000_000  # a busy loop: > 0.1 core
    assert one.memory.working_set_bytes.value > 0
    listed = await cli.runtime.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod))
    )
    assert {s.attributes.id for s in listed.stats} == {cid, idle}
    by_label = await cli.runtime.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(label_selector={"k": "v"}))
    )
    assert [s.attributes.id for s in by_label.stats] == [cid]

    pst = (await cli.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod))).stats
    assert pst.attributes.labels["app"] == "stats"
    assert {c.attributes.id for c in pst.linux.containers} == {cid, idle}
    assert pst.linux.cpu.usage_core_nano_seconds.value >= one.cpu.usage_core_nano_seconds.value
    assert "lo" in [i.name for i in pst.linux.network.interfaces]

    fs = await cli.images.ImageFsInfo(pb.ImageFsInfoRequest())
    [writable] = fs.container_filesystems
    assert writable.fs_id.mountpoint.endswith("/containers")
    assert writable.used_bytes.value >= 512 * 1024  # the 512 KiB /blob in a writable layer
    idle_stats = await cli.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=idle))
    assert idle_stats.stats.writable_layer.used_bytes.value >= 512 * 1024

    descs = await cli.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest())
    names = {d.name for d in descs.descriptors}
    assert "container_cpu_usage_seconds_total" in names
    assert "container_memory_working_set_bytes" in names
    pm = await cli.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
    [mine] = [p for p in pm.pod_metrics if p.pod_sandbox_id == pod]
    assert {c.container_id for c in mine.container_metrics} == {cid, idle}
    await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert cache.get(cid) is None


async def test_mount_propagation_and_host_pid(
    rsrv: CRIServer, busybox_ref: str, tmp_path: Path
) -> None:
    """rslave sees host mounts made after start; rshared (privileged) pushes mounts back to
    the host; a host-PID pod sees the host's processes."""
    from cri_async import linux

    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("prop")
    pcfg.linux.security_context.namespace_options.pid = pb.NODE
    pcfg.linux.security_context.privileged = True  # kubelet sets it for privileged pods
    pod = await cli.run_pod(pcfg)
    slave_src, shared_src, private_src = (tmp_path / n for n in ("slave", "shared", "private"))
    for d in (slave_src, shared_src, private_src):
        d.mkdir()
    cfg = container_config("c", busybox_ref, command=["sleep", "1000"])
    cfg.linux.security_context.privileged = True
    cfg.linux.security_context.namespace_options.pid = pb.NODE
    cfg.mounts.extend(
        [
            pb.Mount(
                container_path="/slave",
                host_path=str(slave_src),
                propagation=pb.PROPAGATION_HOST_TO_CONTAINER,
            ),
            pb.Mount(
                container_path="/shared",
                host_path=str(shared_src),
                propagation=pb.PROPAGATION_BIDIRECTIONAL,
            ),
            pb.Mount(container_path="/private", host_path=str(private_src)),
        ]
    )
    cid = await run(cli, pod, pcfg, cfg)
    host_mounts = []
    try:
        for d in (slave_src, private_src):
            (d / "sub").mkdir()
            linux.mount("tmpfs", str(d / "sub"), "tmpfs", 0, "size=1m")
            host_mounts.append(str(d / "sub"))
            (d / "sub" / "marker").write_text("from host\n")
        r = await sh(cli, cid, "cat /slave/sub/marker; cat /private/sub/marker 2>&1 || true")
        assert r.stdout.splitlines()[0] == b"from host"  # rslave: host mounts propagate in
        assert b"from host" not in r.stdout.splitlines()[1]  # rprivate: they do not
        r = await sh(
            cli,
            cid,
            "mkdir -p /shared/in && mount -t tmpfs none /shared/in"
            " && echo from-container > /shared/in/m && echo ok",
        )
        assert r.stdout == b"ok\n"
        host_mounts.append(str(shared_src / "in"))
        assert (shared_src / "in" / "m").read_text() == "from-container\n"  # rshared: out
        r = await sh(cli, cid, "cat /proc/1/comm")
        assert r.stdout.strip() == Path("/proc/1/comm").read_bytes().strip()  # host PID ns
    finally:
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        for m in reversed(host_mounts):
            linux.umount(m)


async def test_runtime_default_seccomp_denies_what_unconfined_allows(
    rsrv: CRIServer, busybox_ref: str
) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("seccomp")
    pod = await cli.run_pod(pcfg)
    ids = {}
    for name, profile in (
        ("default", pb.SecurityProfile.RuntimeDefault),
        ("unconfined", pb.SecurityProfile.Unconfined),
    ):
        cfg = container_config(name, busybox_ref, command=["sleep", "1000"])
        cfg.linux.security_context.seccomp.profile_type = profile
        ids[name] = await run(cli, pod, pcfg, cfg)
    # unshare(CLONE_NEWUSER): refused by the RuntimeDefault profile, allowed without one.
    r = await sh(cli, ids["default"], "unshare -U true; echo rc=$?")
    assert b"rc=0" not in r.stdout
    r = await sh(cli, ids["unconfined"], "unshare -U true; echo rc=$?")
    assert r.stdout.strip().endswith(b"rc=0")


@pytest.fixture(scope="module")
def grouped_ref() -> Iterator[str]:
    """busybox whose default user (uid 1000) is a member of group 50000 in /etc/group (as
    critest's test-image-predefined-group)."""
    passwd = im.PASSWD + "default-user:x:1000:1000::/home/default-user:/bin/sh\n"
    group = im.GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
    users = im.layer([im.File("etc/passwd", passwd.encode()), im.File("etc/group", group.encode())])
    with LocalRegistry() as reg:
        im.push(reg, "test/grouped", im.busybox_image(users, user="1000"))
        yield reg.ref("test/grouped")


@pytest.mark.parametrize(
    ("policy", "groups"),
    [(pb.Merge, [1000, 1234, 50000]), (pb.Strict, [1000, 1234])],
)
async def test_supplemental_groups_policy(
    rsrv: CRIServer, grouped_ref: str, policy: int, groups: list[int]
) -> None:
    """Merge adds the image's /etc/group memberships of the user, Strict only what the
    request names; ContainerStatus.user reports what the process got."""
    cli = rsrv.client
    status = await cli.runtime.Status(pb.StatusRequest())
    assert status.features.supplemental_groups_policy
    await cli.pull(grouped_ref)
    pcfg = pod_config("groups")
    pod = await cli.run_pod(pcfg)
    cfg = container_config("c", grouped_ref, command=["sleep", "1000"])
    sc = cfg.linux.security_context
    sc.run_as_user.value = 1000
    sc.supplemental_groups.append(1234)
    sc.supplemental_groups_policy = policy  # type: ignore[assignment]
    cid = await run(cli, pod, pcfg, cfg)
    r = await sh(cli, cid, "id -u; id -g; id -G")
    assert r.stdout.decode().split("\n")[:3] == ["1000", "1000", " ".join(map(str, groups))]
    user = (await cli.container_status(cid)).user.linux
    assert (user.uid, user.gid, sorted(user.supplemental_groups)) == (1000, 1000, groups)


async def test_deprecated_seccomp_and_apparmor_fields(
    rsrv: CRIServer, busybox_ref: str, tmp_path: Path
) -> None:
    """seccomp_profile_path: localhost/<file>, docker/default, unconfined; a bad string or
    file fails CreateContainer naming it. AppArmor on a host without it: only unconfined."""
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("legacy")
    pod = await cli.run_pod(pcfg)
    block_chmod = tmp_path / "block-chmod.json"
    block_chmod.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )

    def ctr(name: str, seccomp: str = "", apparmor: str = "") -> pb.ContainerConfig:
        cfg = container_config(name, busybox_ref, command=["sleep", "1000"])
        cfg.linux.security_context.seccomp_profile_path = seccomp
        cfg.linux.security_context.apparmor_profile = apparmor
        return cfg

    local = await run(cli, pod, pcfg, ctr("local", f"localhost/{block_chmod}"))
    r = await sh(cli, local, "chmod 400 /tmp 2>&1; echo rc=$?")
    assert b"Operation not permitted" in r.stdout and b"rc=1" in r.stdout
    docker = await run(cli, pod, pcfg, ctr("docker", "docker/default"))
    r = await sh(cli, docker, "grep Seccomp: /proc/self/status; unshare -U true; echo rc=$?")
    assert r.stdout.split()[1] == b"2" and not r.stdout.strip().endswith(b"rc=0")
    free = await run(cli, pod, pcfg, ctr("free", "unconfined", apparmor="unconfined"))
    r = await sh(cli, free, "grep Seccomp: /proc/self/status")
    assert r.stdout.split()[1] == b"0"

    (tmp_path / "broken.json").write_text("{not json")
    for name, seccomp, apparmor, code, needle in (
        ("nopfx", str(block_chmod), "", Status.INVALID_ARGUMENT, "seccomp_profile_path"),
        ("missing", f"localhost/{tmp_path}/gone.json", "", Status.INVALID_ARGUMENT, "gone.json"),
        ("broken", f"localhost/{tmp_path}/broken.json", "", Status.INVALID_ARGUMENT, "not JSON"),
        ("aa", "", "runtime/default", Status.FAILED_PRECONDITION, "AppArmor is not enabled"),
    ):
        if Path("/sys/kernel/security/apparmor").exists() and name == "aa":
            continue  # a host with AppArmor applies it
        with pytest.raises(GRPCError) as err:
            await cli.create_container(pod, ctr(name, seccomp, apparmor), pcfg)
        assert err.value.status is code and needle in str(err.value.message), name


async def test_devices(rsrv: CRIServer, busybox_ref: str, tmp_path: Path) -> None:
    """Host device nodes appear at their container paths with the nodes' type, numbers and
    mode, and the device cgroup allows exactly the requested access. Nodes of major 240
    (local use, no driver) tell the two apart: the cgroup allowing, open fails with ENXIO
    (no such device), refusing, with EPERM. A twin of /dev/full shows data flowing."""
    cli = rsrv.client
    await cli.pull(busybox_ref)
    nodes = {}
    for name, minor in (("full", 7), ("a", 1), ("b", 2)):
        nodes[name] = tmp_path / f"dev-{name}"
        major = 1 if name == "full" else 240
        os.mknod(nodes[name], 0o640 | stat.S_IFCHR, os.makedev(major, minor))
    pcfg = pod_config("devices")
    pod = await cli.run_pod(pcfg)
    cfg = container_config("c", busybox_ref, command=["sleep", "1000"])
    cfg.devices.extend(
        [
            pb.Device(
                container_path="/dev/my-full", host_path=str(nodes["full"]), permissions="rw"
            ),
            pb.Device(container_path="/dev/rw-dev", host_path=str(nodes["a"]), permissions="rw"),
            pb.Device(container_path="/dev/ro-dev", host_path=str(nodes["b"]), permissions="r"),
        ]
    )
    cid = await run(cli, pod, pcfg, cfg)
    r = await sh(cli, cid, "stat -c '%F %t:%T %a' /dev/my-full /dev/rw-dev /dev/ro-dev")
    assert r.stdout.decode().splitlines() == [
        "character special file 1:7 640",
        "character special file f0:1 640",  # stat prints the numbers in hex
        "character special file f0:2 640",
    ]
    r = await sh(cli, cid, "echo x > /dev/my-full")
    assert b"No space left on device" in r.stderr
    r = await sh(cli, cid, "echo x > /dev/rw-dev; cat /dev/rw-dev")
    assert r.stderr.count(b"No such device or address") == 2  # allowed: reaches the kernel
    r = await sh(cli, cid, "echo x > /dev/ro-dev; cat /dev/ro-dev")
    errors = r.stderr.decode().splitlines()
    assert "Operation not permitted" in errors[0]  # write: refused by the device cgroup
    assert "No such device or address" in errors[1]  # read: allowed
    rules = Path("/sys/fs/cgroup/devices") / f"cri-async/pod-{pod[:16]}/{cid}/devices.list"
    if rules.exists():  # cgroup v1: the rules are readable as text
        assert {"c 240:1 rw", "c 240:2 r"} <= set(rules.read_text().splitlines())
    missing = container_config("m", busybox_ref, command=["sleep", "1000"])
    missing.devices.append(pb.Device(container_path="/dev/x", host_path=str(tmp_path / "no")))
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, missing, pcfg)
    assert err.value.status is Status.INVALID_ARGUMENT and "was not found" in err.value.message


async def test_recursive_read_only_mounts(
    rsrv: CRIServer, busybox_ref: str, tmp_path: Path
) -> None:
    """Both runtimes apply "rro" (a submount of the volume is read-only too) and say so in
    Status, so kubelet and critest use it."""
    from cri_async import linux

    cli = rsrv.client
    status = await cli.runtime.Status(pb.StatusRequest())
    [handler] = [h for h in status.runtime_handlers if h.name == ""]
    assert handler.features.recursive_read_only_mounts
    await cli.pull(busybox_ref)
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    linux.mount("tmpfs", str(vol / "sub"), "tmpfs", 0, "size=1m")
    try:
        pcfg = pod_config("rro")
        pod = await cli.run_pod(pcfg)
        cfg = container_config("c", busybox_ref, command=["sleep", "1000"])
        cfg.mounts.append(
            pb.Mount(
                container_path="/vol", host_path=str(vol), readonly=True, recursive_read_only=True
            )
        )
        cid = await run(cli, pod, pcfg, cfg)
        r = await sh(cli, cid, "touch /vol/x /vol/sub/y 2>&1; echo rc=$?")
        assert r.stdout.count(b"Read-only file system") == 2
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    finally:
        linux.umount(str(vol / "sub"))
