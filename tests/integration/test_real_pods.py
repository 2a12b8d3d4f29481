"""A kubelet-style sequence on real runtimes (runc, crun) under conmon, from a pulled image."""

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.config import Config, HandlerConfig, ImagesConfig, StateConfig
from cri_async.logs.crilog import Stream
from cri_async.store.db import SQLiteStore
from cri_async.testing import CRIServer
from tests.support.poll import until
from tests.support.procs import processes_mentioning

from .conftest import require, wait_exit, wait_log
from .test_restart import Proc

pytestmark = [pytest.mark.root, pytest.mark.registry]


async def test_kubelet_sequence(rsrv: CRIServer, busybox_ref: str, tmp_path: Path) -> None:
    cli = rsrv.client
    image_id = await cli.pull(busybox_ref)
    logs = tmp_path / "pods"
    pcfg = pod_config("web", log_directory=str(logs))
    pod = await cli.run_pod(pcfg)

    ccfg = container_config(
        "app",
        busybox_ref,
        command=["sh", "-c", "echo hello; echo oops >&2; hostname; exec sleep 1000"],
        log_path="app/0.log",
    )
    cid = await cli.create_container(pod, ccfg, pcfg)
    await cli.start_container(cid)
    st = await cli.container_status(cid)
    assert st.state == pb.CONTAINER_RUNNING and st.image_id == image_id

    r = await cli.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; id -u; exit 3"], timeout=10)
    assert (r.exit_code, r.stderr) == (3, b"err\n")
    assert r.stdout == b"out\n0\n"
    with pytest.raises(GRPCError) as err:
        await cli.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert err.value.status is Status.DEADLINE_EXCEEDED

    expected = {Stream.STDOUT: b"hello\nweb\n", Stream.STDERR: b"oops\n"}
    assert await wait_log(logs / "app/0.log", expected) == expected

    short = await cli.create_container(
        pod, container_config("short", busybox_ref, command=["sh", "-c", "exit 7"]), pcfg
    )
    await cli.start_container(short)
    st = await wait_exit(cli, short)
    assert (st.exit_code, st.reason) == (7, "Error")

    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5))
    st = await cli.container_status(cid)
    assert st.state == pb.CONTAINER_EXITED and st.exit_code in (137, 143)
    for c in (cid, short):
        await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c))
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers


async def test_a_log_path_conmon_cannot_open_fails_cleanly(
    rsrv: CRIServer, busybox_ref: str, tmp_path: Path
) -> None:
    """conmon exits before it is told to go on: the create fails with what it said."""
    cli = rsrv.client
    await cli.pull(busybox_ref)
    logs = tmp_path / "logs"
    (logs / "taken").mkdir(parents=True)
    pcfg = pod_config("p", log_directory=str(logs))
    pod = await cli.run_pod(pcfg)
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, container_config("c", busybox_ref, log_path="taken"), pcfg)
    assert err.value.status is Status.FAILED_PRECONDITION, err.value.message
    assert "conmon" in str(err.value.message)
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers


async def test_missing_runtime_binary_is_not_ready_and_refused(tmp_path: Path) -> None:
    require("runc")
    cfg = dataclasses.replace(
        Config(),
        runtimes={
            "": HandlerConfig(backend="runc"),
            "ghost": HandlerConfig(backend="youki", binary="/nonexistent/youki"),
        },
        images=ImagesConfig(backend="registry"),
    )
    async with CRIServer(tmp_path, config=cfg) as srv:
        st = await srv.client.runtime.Status(pb.StatusRequest(verbose=True))
        assert {c.type: c.status for c in st.status.conditions}["RuntimeReady"]
        assert {h.name for h in st.runtime_handlers} == {"", "ghost"}
        assert '"ghost": {"ready": false' in st.info["handlers"]
        with pytest.raises(GRPCError) as err:
            await srv.client.runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=pod_config("p"), runtime_handler="ghost")
            )
        assert err.value.status is Status.FAILED_PRECONDITION
        assert "/nonexistent/youki not found" in str(err.value.message)
        assert not (await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items


@pytest.mark.parametrize("kind", ["runc", "crun"])
async def test_kill9_restart_keeps_real_containers(
    kind: str, busybox_ref: str, tmp_path: Path
) -> None:
    """kill -9 of cri-async: containers keep running under conmon; the restarted server
    finds them running, records the exits that happened while it was down, and a remove
    leaves nothing behind."""
    require(kind)
    run_root = Path(f"/run/crt{os.getpid() % 10000}k{kind[0]}")
    p = Proc(tmp_path, images_backend="registry", runtime=kind, run_root=run_root)
    cli = await p.start()
    try:
        await cli.pull(busybox_ref)
        pcfg = pod_config("web")
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
        cli.close()
        p.kill9()
        # "short" exits while nobody is watching: conmon records it for the next server.
        exit_file = run_root / kind / "default" / "exits" / short
        await until(exit_file.exists, what="conmon to record the exit of 'short'")
        cli = await p.start()
        st = await cli.container_status(long)
        assert st.state == pb.CONTAINER_RUNNING
        assert (await cli.exec_sync(long, ["echo", "still here"], timeout=10)).stdout == (
            b"still here\n"
        )
        st = await cli.container_status(short)
        assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 4)
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    finally:
        cli.close()
        p.terminate()
        p.sock.unlink(missing_ok=True)
    linux.umount(str(run_root / "ns"))
    leftovers = [m[0] for m in linux.mountinfo() if m[0].startswith(str(run_root))]
    assert not leftovers
    procs = processes_mentioning(str(run_root))
    assert not procs  # no conmon left behind
    shutil.rmtree(run_root, ignore_errors=True)


async def test_startup_reconciles_orphans(
    busybox_ref: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Host objects whose database rows are gone (a crash between the host change and the
    commit) are removed at startup, each with a log line."""
    require("runc")
    run_root = Path(f"/run/crt{os.getpid() % 10000}o")
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="runc")},
        images=ImagesConfig(backend="registry"),
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )
    srv = CRIServer(tmp_path, config=cfg)
    srv.config = dataclasses.replace(srv.config, state=cfg.state)
    async with srv:
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("orphan")
        pod = await cli.run_pod(pcfg)
        cid = await cli.create_container(
            pod, container_config("c", busybox_ref, command=["sleep", "1000"]), pcfg
        )
        await cli.start_container(cid)
    db = SQLiteStore(Path(cfg.state.root) / "state.db")
    await db.open()
    await db.delete("container", [cid])
    await db.delete("pod sandbox", [pod])
    await db.close()
    caplog.set_level(logging.WARNING)
    async with srv:
        assert not (await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    assert f"removed orphan container {cid}" in caplog.text
    assert f"removed orphan pod sandbox {pod}" in caplog.text
    assert not list(Path("/sys/fs/cgroup").glob(f"*/cri-async/pod-{pod[:16]}"))
    linux.umount(str(run_root / "ns"))
    assert not [m for m in linux.mountinfo() if m[0].startswith(str(run_root))]
    await until(lambda: not processes_mentioning(cid), what=f"no process of {cid[:12]}")
    shutil.rmtree(run_root, ignore_errors=True)
