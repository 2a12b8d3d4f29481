"""Pods in a user namespace of their own (userns_options mode POD) on real runtimes: crun
(which can make idmapped mounts) runs them, runc 1.1 (which cannot) reports
user_namespaces: false and refuses them; bad options are INVALID_ARGUMENT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.testing import CRIServer

pytestmark = [pytest.mark.root, pytest.mark.registry]

HOST_ID, LENGTH = 1_000_000, 65536  # far from any uid of this machine


def userns_pod(name: str, **kw: object) -> pb.PodSandboxConfig:
    cfg = pod_config(name, **kw)  # type: ignore[arg-type]
    mapping = pb.IDMapping(host_id=HOST_ID, container_id=0, length=LENGTH)
    opts = cfg.linux.security_context.namespace_options
    opts.userns_options.mode = pb.POD
    opts.userns_options.uids.append(mapping)
    opts.userns_options.gids.append(mapping)
    return cfg


async def sh(cli: CRIClient, cid: str, script: str) -> str:
    r = await cli.exec_sync(cid, ["sh", "-c", script], timeout=20)
    assert r.exit_code == 0, r
    return r.stdout.decode()


async def handler_kind(srv: CRIServer) -> str:
    status = await srv.client.runtime.Status(pb.StatusRequest(verbose=True))
    [handler] = [h for h in status.runtime_handlers if h.name == ""]
    kind = srv.config.runtimes[""].backend
    # Only a runtime that can make idmapped mounts offers user namespaces.
    assert handler.features.user_namespaces is (kind == "crun")
    return kind


async def test_bad_user_namespace_options_are_invalid(rsrv: CRIServer) -> None:
    cli = rsrv.client
    cfg = userns_pod("bad")
    cfg.linux.security_context.namespace_options.userns_options.uids.append(
        pb.IDMapping(host_id=2 * HOST_ID, container_id=0, length=LENGTH)
    )
    for opts in (
        cfg,
        pod_config("ctr"),
    ):
        if opts is not cfg:
            opts.linux.security_context.namespace_options.userns_options.mode = pb.CONTAINER
        with pytest.raises(GRPCError) as err:
            await cli.run_pod(opts)
        assert err.value.status is Status.INVALID_ARGUMENT
        assert "namespace_options.userns_options" in str(err.value.message)


async def test_pod_user_namespace(rsrv: CRIServer, busybox_ref: str, tmp_path: Path) -> None:
    cli = rsrv.client
    if await handler_kind(rsrv) != "crun":
        with pytest.raises(GRPCError) as err:
            await cli.run_pod(userns_pod("refused"))
        assert err.value.status is Status.FAILED_PRECONDITION
        assert "user_namespaces: false" in str(err.value.message)
        return
    await cli.pull(busybox_ref)
    pcfg = userns_pod("userns")
    pcfg.linux.security_context.namespace_options.pid = pb.POD
    pod = await cli.run_pod(pcfg)
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "f").write_text("host root's\n")
    cids = []
    for name in ("a", "b"):
        cfg = container_config(name, busybox_ref, command=["sleep", "1000"])
        cfg.linux.security_context.namespace_options.CopyFrom(
            pcfg.linux.security_context.namespace_options
        )
        mapping = pb.IDMapping(host_id=HOST_ID, container_id=0, length=LENGTH)
        cfg.mounts.append(
            pb.Mount(
                container_path="/mapped",
                host_path=str(volume),
                uidMappings=[mapping],
                gidMappings=[mapping],
            )
        )
        cfg.mounts.append(pb.Mount(container_path="/plain", host_path=str(volume)))
        cid = await cli.create_container(pod, cfg, pcfg)
        await cli.start_container(cid)
        cids.append(cid)
    a, b = cids

    assert (await sh(cli, a, "cat /proc/self/uid_map")).split() == ["0", str(HOST_ID), str(LENGTH)]
    assert (await sh(cli, a, "cat /proc/self/gid_map")).split() == ["0", str(HOST_ID), str(LENGTH)]
    userns = {c: await sh(cli, c, "readlink /proc/self/ns/user") for c in cids}
    assert userns[a] == userns[b] != os.readlink("/proc/self/ns/user") + "\n"
    # The image's files are root's inside; what root writes lands as the mapped host uid.
    assert (await sh(cli, a, "id -u; stat -c %u:%g /bin/busybox /")).split() == ["0", "0:0", "0:0"]
    await sh(cli, a, "echo hi > /written")
    info = await cli.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=a, verbose=True)
    )
    layer = Path(__import__("json").loads(info.info["info"])["backend_info"]["writableLayer"])
    st = (layer / "written").stat()
    assert (st.st_uid, st.st_gid) == (HOST_ID, HOST_ID)
    # The pod's files are its root's; sysfs and proc mount (the namespaces are the pod's).
    assert (await sh(cli, a, "stat -c %u /etc/hosts /etc/resolv.conf /etc/hostname")).split() == [
        "0"
    ] * 3
    await sh(cli, a, "echo '# root may write' >> /etc/hosts")
    assert "lo" in (await sh(cli, a, "ls /sys/class/net")).split()
    # A shared PID namespace: the pause is its init, both containers are in it.
    assert "catatonit" in await sh(cli, b, "cat /proc/1/cmdline")
    assert (await sh(cli, b, "ps -o args")).count("sleep 1000") == 2
    # Volumes: idmapped when kubelet gives mappings, the host's owners (unmapped) otherwise.
    assert (await sh(cli, a, "stat -c %u /mapped/f /plain/f")).split() == ["0", "65534"]
    await sh(cli, a, "echo from-pod > /mapped/g")
    assert ((volume / "g").stat().st_uid, (volume / "g").read_text()) == (0, "from-pod\n")

    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if pod in m]
