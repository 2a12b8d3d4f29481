"""The shimv2 backend on Debian's containerd-shim-runc-v2: what only a shim handler has
(restart through the shim, a shim that dies, infra tasks, stats through the shim, exec and
attach sessions, port forwarding, orphans), each test checking that nothing is left: no
shim or container process, shim socket, bundle, runc state, mount or pod cgroup.

The kubelet-style sequence, OOM, log reopening, stats, security and namespace tests of
test_real_pods.py and test_real_features.py run on this handler as well (``rsrv``'s
``shimv2`` parameter).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from grpclib import GRPCError, Status

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.backends.shimv2.backend import ShimBackend
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.config import Config, ImagesConfig, StateConfig
from cri_async.core.model import Container, Sandbox
from cri_async.core.streams import OutputStream, Stdio, TerminalSize
from cri_async.logs.crilog import Stream
from cri_async.store.db import SQLiteStore
from cri_async.testing import CRIServer
from cri_async.ttrpc import socket_path
from tests.support.poll import until
from tests.support.procs import processes_mentioning

from .conftest import SHIM_RUNC, handler_config, require, wait_exit, wait_log
from .test_restart import Proc

pytestmark = [pytest.mark.root, pytest.mark.registry]

NS = "cri-async"


def _run_root(tag: str) -> Path:
    return Path(f"/run/crs{os.getpid() % 10000}{tag}")


def _handler_root(run_root: Path) -> Path:
    return run_root / "shimv2" / "default"


@dataclasses.dataclass
class Seen:
    """What a test created, for the leftover check."""

    run_root: Path
    ids: set[str] = dataclasses.field(default_factory=set)
    addresses: set[str] = dataclasses.field(default_factory=set)
    pods: set[str] = dataclasses.field(default_factory=set)

    async def container(self, cli: CRIClient, cid: str) -> dict[str, Any]:
        st = await cli.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=True)
        )
        info: dict[str, Any] = json.loads(st.info["info"])["backend_info"]
        self.ids.add(cid)
        self.addresses.add(info["shimAddress"])
        return info

    def leftovers(self) -> dict[str, list[str]]:
        root = _handler_root(self.run_root)
        return {
            # Container processes by their ids; every shim of this server names its events
            # socket (under the run root) on its command line.
            "processes": sorted(
                {
                    p
                    for i in [*self.ids, str(self.run_root / "shimv2")]
                    for p in processes_mentioning(i).values()
                }
            ),
            "sockets": sorted(a for a in self.addresses if os.path.exists(socket_path(a))),
            "bundles": sorted(os.listdir(root / "containers"))
            if (root / "containers").is_dir()
            else [],
            "runc state": sorted(os.listdir(root / "runc" / NS))
            if (root / "runc" / NS).is_dir()
            else [],
            "pod cgroups": [
                str(p)
                for pod in self.pods
                for p in Path("/sys/fs/cgroup").glob(f"*/cri-async/pod-{pod[:16]}")
            ],
        }


def _config(run_root: Path, tmp_path: Path, **handler: Any) -> Config:
    return dataclasses.replace(
        Config(),
        runtimes={"": handler_config("shimv2", **handler)},
        images=ImagesConfig(backend="registry"),
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )


@asynccontextmanager
async def shim_server(
    tmp_path: Path, tag: str, **handler: Any
) -> AsyncIterator[tuple[CRIServer, Seen]]:
    """An in-process server with one shimv2 handler (``handler``: its extra keys); on the
    way out every pod is removed and nothing may be left."""
    require("shimv2")
    run_root = _run_root(tag)
    cfg = _config(run_root, tmp_path, **handler)
    srv = CRIServer(tmp_path, config=cfg)
    srv.config = dataclasses.replace(srv.config, state=cfg.state)
    seen = Seen(run_root)
    try:
        async with srv:
            yield srv, seen
            for p in (await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items:
                await srv.client.runtime.RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=p.id)
                )
        await until(lambda: not seen.leftovers()["processes"], what="shim processes to exit")
        assert seen.leftovers() == {k: [] for k in seen.leftovers()}
    finally:
        linux.umount(str(run_root / "ns"))
        assert not [m for m in linux.mountinfo() if m[0].startswith(str(run_root))]
        shutil.rmtree(run_root, ignore_errors=True)


def _backend(srv: CRIServer) -> ShimBackend:
    assert srv.server is not None
    backend = srv.server.backends[""]
    assert isinstance(backend, ShimBackend)
    return backend


def _container(srv: CRIServer, cid: str) -> Container:
    assert srv.server is not None
    return srv.server.runtime.ctx.containers.get(cid)


def _sandbox(srv: CRIServer, pod: str) -> Sandbox:
    assert srv.server is not None
    return srv.server.runtime.ctx.sandboxes.get(pod)


async def _run(cli: CRIClient, pod: str, pcfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    cid = await cli.create_container(pod, cfg, pcfg)
    await cli.start_container(cid)
    return cid


async def test_kill9_restart_through_the_shim(busybox_ref: str, tmp_path: Path) -> None:
    """kill -9 of cri-async: the shims keep the containers; the restarted server loads
    them, reads on from their FIFOs (output written meanwhile reaches the log), records the
    exit that happened while it was down, starts a container created before, execs and
    stops through the same shims; a clean restart after that too."""
    require("shimv2")
    run_root = _run_root("k")
    p = Proc(
        tmp_path,
        images_backend="registry",
        runtime="shimv2",
        run_root=run_root,
        handler_toml=f'runtime_type = "{SHIM_RUNC}"\n',
    )
    seen = Seen(run_root)
    cli = await p.start()
    try:
        await cli.pull(busybox_ref)
        logs = tmp_path / "logs"
        pcfg = pod_config("web", log_directory=str(logs))
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        ticker = "i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.1; done"
        long = await _run(
            cli,
            pod,
            pcfg,
            container_config(
                "long", busybox_ref, command=["sh", "-c", ticker], log_path="long.log"
            ),
        )
        short = await _run(
            cli,
            pod,
            pcfg,
            container_config("short", busybox_ref, command=["sh", "-c", "sleep 1; exit 4"]),
        )
        later = await cli.create_container(
            pod, container_config("later", busybox_ref, command=["sleep", "1000"]), pcfg
        )
        for cid in (long, short, later):
            await seen.container(cli, cid)
        before = await wait_log(logs / "long.log", {Stream.STDOUT: b"tick3\n"})
        short_pid = int((_handler_root(run_root) / "containers" / short / "init.pid").read_text())
        cli.close()
        p.kill9()
        # While nobody listens "short" ends (its shim keeps the exit) and "long" goes on.
        await until(lambda: not Path(f"/proc/{short_pid}").exists(), what="'short' to exit")
        ticks = len(before[Stream.STDOUT].splitlines())
        cli = await p.start()
        st = await cli.container_status(long)
        assert st.state == pb.CONTAINER_RUNNING
        after = await wait_log(logs / "long.log", {Stream.STDOUT: f"tick{ticks + 5}\n".encode()})
        numbers = [int(line[4:]) for line in after[Stream.STDOUT].splitlines()]
        assert numbers == list(range(len(numbers)))  # nothing lost, nothing doubled
        r = await cli.exec_sync(long, ["echo", "still here"], timeout=10)
        assert (r.exit_code, r.stdout) == (0, b"still here\n")
        st = await cli.container_status(short)
        assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 4, "Error")
        await cli.start_container(later)  # created before the kill, started after
        assert (await cli.exec_sync(later, ["true"], timeout=10)).exit_code == 0
        # A clean restart (SIGTERM) lets go of the shims the same way.
        cli.close()
        assert p.terminate() == 0
        cli = await p.start()
        assert (await cli.container_status(long)).state == pb.CONTAINER_RUNNING
        tail = f"tick{len(after[Stream.STDOUT].splitlines()) + 5}\n".encode()
        after = await wait_log(logs / "long.log", {Stream.STDOUT: tail})
        numbers = [int(line[4:]) for line in after[Stream.STDOUT].splitlines()]
        assert numbers == list(range(len(numbers)))
        await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=long, timeout=5))
        st = await cli.container_status(long)
        assert st.state == pb.CONTAINER_EXITED and st.exit_code in (137, 143)
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
        await until(lambda: not seen.leftovers()["processes"], what="the shim to exit")
        assert seen.leftovers() == {k: [] for k in seen.leftovers()}
    finally:
        cli.close()
        p.terminate()
        p.sock.unlink(missing_ok=True)
        linux.umount(str(run_root / "ns"))
        shutil.rmtree(run_root, ignore_errors=True)


async def test_a_dead_shim_ends_its_container(busybox_ref: str, tmp_path: Path) -> None:
    """SIGKILL of the shim: the container is recorded exited 137 with the reason, ``shim
    delete`` kills what the shim left running and unmounts nothing it does not own; the
    removal then leaves nothing."""
    async with shim_server(tmp_path, "d") as (srv, seen):
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("dead")
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        cid = await _run(
            cli, pod, pcfg, container_config("c", busybox_ref, command=["sleep", "1000"])
        )
        await seen.container(cli, cid)
        init_pid = int((_handler_root(seen.run_root) / "containers" / cid / "init.pid").read_text())
        [shim_pid] = [p for p, cmd in processes_mentioning(cid).items() if "containerd-shim" in cmd]
        os.kill(shim_pid, signal.SIGKILL)
        st = await wait_exit(cli, cid)
        assert (st.exit_code, st.reason) == (137, "Error")
        assert "shim" in st.message
        await until(
            lambda: not Path(f"/proc/{init_pid}").exists(),
            what="the orphaned container to be killed",
        )
        with pytest.raises(GRPCError) as err:
            await cli.exec_sync(cid, ["true"], timeout=5)
        assert err.value.status is Status.FAILED_PRECONDITION
        await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))


async def test_infra_task_and_stats_through_the_shim(busybox_ref: str, tmp_path: Path) -> None:
    """sandbox_task: the pod's infra task runs first (container-type=sandbox) and its
    containers join its shim; shim_stats: the stats cache reads them through Stats."""
    async with shim_server(tmp_path, "i", sandbox_task=True, shim_stats=True) as (srv, seen):
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("infra")
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        seen.ids.add(pod)
        infra = _handler_root(seen.run_root) / "containers" / pod
        spec = json.loads((infra / "config.json").read_text())
        assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
        assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == pod
        state = json.loads(
            (_handler_root(seen.run_root) / "runc" / NS / pod / "state.json").read_text()
        )
        assert Path(f"/proc/{state['init_process_pid']}").exists()
        cfg = container_config("c", busybox_ref, command=["sh", "-c", "while :; do :; done"])
        cfg.linux.resources.memory_limit_in_bytes = 64 << 20
        cid = await _run(cli, pod, pcfg, cfg)
        info = await seen.container(cli, cid)
        infra_boot = json.loads((infra / "bootstrap.json").read_text())
        assert info["shimAddress"] == infra_boot["address"]  # one shim for the pod
        seen.addresses.add(infra_boot["address"])
        assert _backend(srv).reads_stats(cid)
        assert srv.server is not None and srv.server.runtime.ctx.stats is not None
        cache = srv.server.runtime.ctx.stats
        await cache.refresh_now()
        await asyncio.sleep(0.3)  # the window the CPU rate is measured over
        await cache.refresh_now()
        st = (await cli.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid))).stats
        assert st.cpu.usage_nano_cores.value > 100_000_000
        ws = st.memory.working_set_bytes.value
        assert ws > 0 and st.memory.available_bytes.value == (64 << 20) - ws
        await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
        assert not Path(f"/proc/{state['init_process_pid']}").exists()
        assert (await cli.container_status(cid)).state == pb.CONTAINER_EXITED


async def test_exec_and_attach_sessions(busybox_ref: str, tmp_path: Path) -> None:
    """The backend's streaming sessions: exec with stdin and both outputs, a terminal
    exec with a resize, an exec killed by closing its session, attach to a stdin_once
    container whose stdin end finishes it."""
    async with shim_server(tmp_path, "s") as (srv, seen):
        cli = srv.client
        backend = _backend(srv)
        await cli.pull(busybox_ref)
        pcfg = pod_config("streams", log_directory=str(tmp_path / "logs"))
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        cid = await _run(
            cli, pod, pcfg, container_config("c", busybox_ref, command=["sleep", "1000"])
        )
        await seen.container(cli, cid)
        c = _container(srv, cid)

        script = "read x; echo got $x; echo err >&2; exit 5"
        s = await backend.exec_session(
            c, ["sh", "-c", script], Stdio(stdin=True, stdout=True, stderr=True)
        )
        await s.write_stdin(b"abc\n")
        await s.close_stdin()
        out = await _drain(s)
        assert out == {OutputStream.STDOUT: b"got abc\n", OutputStream.STDERR: b"err\n"}
        assert await s.wait() == 5
        await s.close()

        t = await backend.exec_session(
            c, ["sh", "-c", "read x; stty size"], Stdio(stdin=True, stdout=True, tty=True)
        )
        await t.resize(TerminalSize(width=100, height=40))
        await t.write_stdin(b"\n")
        out = await _drain(t)
        assert b"40 100" in out[OutputStream.STDOUT]
        assert await t.wait() == 0
        await t.close()

        k = await backend.exec_session(c, ["sleep", "997"], Stdio(stdout=True))
        await until(lambda: any("sleep 997" in cmd for cmd in _all_processes()), what="sleep 997")
        await k.close()
        assert not any("sleep 997" in cmd for cmd in _all_processes())
        assert not list((_handler_root(seen.run_root) / "containers" / cid / "exec").iterdir())

        acfg = container_config(
            "cat",
            busybox_ref,
            command=["sh", "-c", "echo ready; cat; echo bye"],
            log_path="cat.log",
        )
        acfg.stdin = acfg.stdin_once = True
        aid = await _run(cli, pod, pcfg, acfg)
        await seen.container(cli, aid)
        await wait_log(tmp_path / "logs" / "cat.log", {Stream.STDOUT: b"ready\n"})
        a = await backend.attach_session(
            _container(srv, aid), Stdio(stdin=True, stdout=True, stderr=True)
        )
        await a.write_stdin(b"hello\n")
        chunk = await a.read_output()
        assert chunk is not None and chunk.data == b"hello\n"
        await a.close_stdin()
        assert await _drain(a) == {OutputStream.STDOUT: b"bye\n"}
        st = await wait_exit(cli, aid)
        assert st.exit_code == 0
        await a.close()
        log = await wait_log(tmp_path / "logs" / "cat.log", {Stream.STDOUT: b"bye\n"})
        assert log[Stream.STDOUT] == b"ready\nhello\nbye\n"  # the CRI log has it all


async def _drain(session: Any) -> dict[OutputStream, bytes]:
    out: dict[OutputStream, bytes] = {}
    async with asyncio.timeout(20):
        while (chunk := await session.read_output()) is not None:
            out[chunk.stream] = out.get(chunk.stream, b"") + chunk.data
    return out


def _all_processes() -> list[str]:
    return list(processes_mentioning("").values())


async def test_port_forward_dials_in_the_pod_netns(busybox_ref: str, tmp_path: Path) -> None:
    async with shim_server(tmp_path, "p") as (srv, seen):
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("pf")
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        server = ["sh", "-c", "while :; do echo hi from the pod | nc -l -p 7777; done"]
        cid = await _run(cli, pod, pcfg, container_config("srv", busybox_ref, command=server))
        await seen.container(cli, cid)

        async def answered() -> bytes | None:
            try:
                reader, writer = await _backend(srv).port_forward(_sandbox(srv, pod), 7777)
            except ConnectionRefusedError:
                return None
            data = await reader.read()
            writer.close()
            return data or None

        assert await until(answered, what="the pod's port 7777") == b"hi from the pod\n"
        with pytest.raises(ConnectionRefusedError):  # nothing listens there in the pod
            await _backend(srv).port_forward(_sandbox(srv, pod), 7778)


async def test_startup_removes_orphan_tasks(
    busybox_ref: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task whose record is gone (a crash between the shim's work and the commit) is
    taken down at startup: its shim's task deleted, the shim shut down, the bundle gone."""
    async with shim_server(tmp_path, "o") as (srv, seen):
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("orphan")
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        cid = await _run(
            cli, pod, pcfg, container_config("c", busybox_ref, command=["sleep", "1000"])
        )
        await seen.container(cli, cid)
        await srv.stop()
        db = SQLiteStore(tmp_path / "state" / "state.db")
        await db.open()
        await db.delete("container", [cid])
        await db.delete("pod sandbox", [pod])
        await db.close()
        caplog.set_level(logging.WARNING)
        await srv.start()
        cli = srv.client
        assert not (await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
        assert srv.server is not None and srv.server.runtime.settled is not None
        await srv.server.runtime.settled  # the orphan sweep runs after the socket answers
        assert f"removed orphan task {cid}" in caplog.text
        assert f"removed orphan pod sandbox {pod}" in caplog.text


async def test_a_failed_create_leaves_nothing(busybox_ref: str, tmp_path: Path) -> None:
    """runc refusing the container (no such executable) is FAILED_PRECONDITION, as on the
    runc backend; its shim, bundle and rootfs mount are gone and the pod goes on."""
    async with shim_server(tmp_path, "f") as (srv, seen):
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("failing")
        pod = await cli.run_pod(pcfg)
        seen.pods.add(pod)
        with pytest.raises(GRPCError) as err:
            await cli.create_container(
                pod, container_config("bad", busybox_ref, command=["nonexistent"]), pcfg
            )
        assert err.value.status is Status.FAILED_PRECONDITION
        assert "executable file not found" in str(err.value.message)
        assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
        assert seen.leftovers()["bundles"] == []
        with pytest.raises(GRPCError) as err:
            await cli.exec_sync(
                await _run(
                    cli, pod, pcfg, container_config("ok", busybox_ref, command=["sleep", "1000"])
                ),
                ["nonexistent"],
                timeout=5,
            )
        assert err.value.status is Status.FAILED_PRECONDITION
