"""State survives restarts and kill -9: same ids, states, timestamps, labels; no duplicates."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.core import model as m
from cri_async.core import serde
from cri_async.store.db import SQLiteStore
from cri_async.testing import CRIServer
from tests.support.poll import until

from .conftest import wait_state

pytestmark = [pytest.mark.socket, pytest.mark.subprocess]


class Proc:
    """`cri-async serve` as a separate process, as an operator runs it."""

    def __init__(
        self,
        root: Path,
        *,
        images_backend: str = "fake",
        runtime: str = "fake",
        run_root: Path | None = None,
        handler_toml: str = "",
        network: str = "",
        env: dict[str, str] | None = None,
        log_level: str = "debug",
        server: str = "",
    ) -> None:
        """``network``: the [network] table's keys (default: an empty CNI config dir);
        ``server``: more [server] keys; ``env``: added to the server's environment."""
        self.root = root
        self.sock = Path(f"/tmp/cri-{os.getpid()}-{id(self)}.sock")
        self.config = root / "config.toml"
        network = network or f'conf_dirs = ["{root}/cni"]'
        self.config.write_text(
            f'[server]\nsocket = "{self.sock}"\n{server}\n'
            f'[state]\nroot = "{root}/state"\nrun_root = "{run_root or root / "run"}"\n'
            f'[log]\nlevel = "{log_level}"\n[images]\nbackend = "{images_backend}"\n'
            f'[runtimes.""]\nbackend = "{runtime}"\n{handler_toml}'
            f"[network]\n{network}\n"
        )
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> CRIClient:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cri_async.cli", "serve", "--config", str(self.config)],
            stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115
            env=self.env,
        )
        proc = self.proc

        async def answering() -> CRIClient | None:
            if proc.poll() is not None:
                raise AssertionError(self.log())
            if not self.sock.exists():
                return None
            client = CRIClient(self.sock)
            try:
                await client.version()
                return client
            except (ConnectionError, OSError):
                client.close()
                return None

        return await until(answering, timeout=20, interval=0.05, what="the server's Version")

    def log(self) -> str:
        return (self.root / "server.log").read_text()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest_asyncio.fixture
async def proc(tmp_path: Path) -> AsyncIterator[Proc]:
    p = Proc(tmp_path)
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.kill9()
    p.sock.unlink(missing_ok=True)


async def snapshot(cli: CRIClient) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    pods = (await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    ctrs = (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    pod_rows = sorted(
        (p.id, p.state, p.created_at, dict(p.labels), dict(p.annotations), p.metadata.name)
        for p in pods
    )
    rows = []
    for c in ctrs:
        st = await cli.container_status(c.id)
        rows.append(
            (
                c.id,
                c.pod_sandbox_id,
                st.state,
                st.created_at,
                st.started_at,
                st.exit_code,
                dict(st.labels),
                dict(st.annotations),
                st.metadata.name,
            )
        )
    return pod_rows, sorted(rows)


async def populate(cli: CRIClient) -> dict[str, str]:
    await cli.pull("busybox")
    ids: dict[str, str] = {}
    for name in ("a", "b"):
        cfg = pod_config(name, labels={"app": name}, annotations={"note": f"pod {name}"})
        pod = await cli.run_pod(cfg)
        ids[name] = pod
        for cname, cmd in (("run", ["sleep", "infinity"]), ("done", ["sh", "-c", "exit 3"])):
            cid = await cli.create_container(
                pod,
                container_config(
                    cname, "busybox", command=cmd, labels={"c": cname}, annotations={"n": "x"}
                ),
                cfg,
            )
            await cli.start_container(cid)
            ids[f"{name}/{cname}"] = cid
        ids[f"{name}/created"] = await cli.create_container(
            pod, container_config("created", "busybox"), cfg
        )
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=ids["b"]))
    for name in ("a", "b"):  # "exit 3" is over before the snapshots compare states
        await wait_state(cli, ids[f"{name}/done"], pb.CONTAINER_EXITED)
    return ids


async def test_kill9_and_restart_keeps_everything(proc: Proc) -> None:
    cli = await proc.start()
    ids = await populate(cli)
    before = await snapshot(cli)
    cli.close()
    proc.kill9()  # no graceful shutdown; the socket file is left behind

    cli = await proc.start()  # stale socket replaced, state lock free again
    after = await snapshot(cli)
    assert after == before
    assert len(after[0]) == 2 and len(after[1]) == 6
    st = await cli.container_status(ids["a/run"])
    assert st.state == pb.CONTAINER_RUNNING  # kept running across the crash
    r = await cli.exec_sync(ids["a/run"], ["echo", "alive"])
    assert r.stdout == b"alive\n"
    # Names are still held: no duplicate can be created.
    with pytest.raises(Exception, match="already in use"):
        await cli.run_pod(pod_config("a", uid=(await snapshot_uid(cli, ids["a"]))))
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=ids["a/run"], timeout=5))
    assert (await cli.container_status(ids["a/run"])).exit_code == 143
    cli.close()
    assert proc.terminate() == 0
    assert not proc.sock.exists()


async def snapshot_uid(cli: CRIClient, pod: str) -> str:
    st = await cli.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod))
    return st.status.metadata.uid


async def test_container_that_exits_while_down_is_recorded(tmp_path: Path) -> None:
    async with CRIServer(tmp_path) as srv:
        cli = srv.client
        await cli.pull("busybox")
        cfg = pod_config("p")
        pod = await cli.run_pod(cfg)
        cid = await cli.create_container(
            pod, container_config("c", "busybox", command=["sh", "-c", "sleep 0.5; exit 9"]), cfg
        )
        await cli.start_container(cid)
        await srv.stop()
        await asyncio.sleep(0.7)  # the simulated process's 0.5 s run ends while we are down
        await srv.start()
        st = await srv.client.container_status(cid)
        assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 9, "Error")
        assert st.finished_at - st.started_at >= 400_000_000


async def test_half_created_objects_are_rolled_back_at_startup(tmp_path: Path) -> None:
    """A crash between the intent row and the finished create leaves a CREATING row;
    startup removes it and its backend state, and the name is free."""
    async with CRIServer(tmp_path) as srv:
        cfg = pod_config("p", uid="u")
        await srv.client.run_pod(cfg)
        store_path = srv.config.db_path
        backend_root = srv.fake().root
    ghost = m.Sandbox(
        id="e" * 64,
        config=m.SandboxConfig(metadata=m.PodMetadata("ghost", "g", "default")),
        runtime_handler="",
        created_at=1,
        phase=m.Phase.CREATING,
    )
    ghost_ctr = backend_root / ("f" * 64)
    ghost_ctr.mkdir(parents=True)
    db = SQLiteStore(store_path)
    await db.open()
    await db.put("pod sandbox", ghost.id, serde.dumps(ghost))
    sb_id = next(i for i, _ in await db.load("pod sandbox") if i != ghost.id)
    c = m.Container(
        id="f" * 64,
        sandbox_id=sb_id,
        config=m.ContainerConfig(m.ContainerMetadata("half"), m.ImageSpec("busybox")),
        image_id="x",
        image_ref="x",
        created_at=1,
        phase=m.Phase.CREATING,
    )
    await db.put("container", c.id, serde.dumps(c))
    await db.close()

    async with CRIServer(tmp_path) as srv:
        assert srv.server is not None and srv.server.runtime.settled is not None
        await srv.server.runtime.settled  # the rollbacks run beside the first RPCs
        pods = (await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
        assert [p.metadata.name for p in pods] == ["p"]
        assert not (await srv.client.runtime.ListContainers(pb.ListContainersRequest())).containers
        assert not ghost_ctr.exists()
        await srv.client.run_pod(pod_config("ghost", uid="g"))
    db = SQLiteStore(store_path)
    await db.open()
    assert {i for i, _ in await db.load("pod sandbox")} >= {sb_id}
    assert ghost.id not in {i for i, _ in await db.load("pod sandbox")}
    assert await db.load("container") == []
    await db.close()
