"""Runtime over the fake backend: wiring, recovery after a restart, Status, RuntimeConfig."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cri_async.core.errors import AlreadyExists
from cri_async.core.model import (
    Container,
    ContainerState,
    Phase,
    Sandbox,
)
from cri_async.core.ports import BackendStatus
from cri_async.core.runtime import Condition, Runtime
from tests.support.poll import until

from .rig import Backend, Rig, container_config, pod_config


def test_the_default_handler_must_be_configured(rig: Rig) -> None:
    with pytest.raises(ValueError, match="default runtime handler 'runc' is not configured"):
        Runtime(rig.store, {"": rig.backend}, rig.images, default_handler="runc")


async def test_version(rig: Rig) -> None:
    v = rig.runtime.version()
    assert (v.runtime_name, v.runtime_api_version) == ("cri-async", "v1")


async def test_status_reports_the_default_handler_and_the_network(rig: Rig) -> None:
    st = await rig.runtime.status()
    assert st.conditions == (Condition("RuntimeReady", True), Condition("NetworkReady", True))
    assert st.handlers[""].ready and st.info == {}
    rig.backend.ready = False
    st = await rig.runtime.status()
    assert st.conditions[0] == Condition("RuntimeReady", False, "Broken", "told so by the test")


async def test_status_takes_network_readiness_from_its_source(rig: Rig) -> None:
    runtime = Runtime(
        rig.store,
        {"": rig.backend},
        rig.images,
        network_status=lambda: (False, "NetworkPluginNotReady", "no config"),
    )
    st = await runtime.status()
    ready = Condition("NetworkReady", False, "NetworkPluginNotReady", "no config")
    assert st.conditions[1] == ready


class Exploding(Backend):
    async def probe(self) -> BackendStatus:
        raise OSError("probe broke")


async def test_a_broken_handler_is_reported_not_fatal(rig: Rig, tmp_path: Path) -> None:
    broken = Exploding("kata", tmp_path / "kata")
    runtime = Runtime(rig.store, {"": rig.backend, "kata": broken}, rig.images)
    st = await runtime.status(verbose=True)
    assert st.conditions[0].status is True
    assert st.handlers["kata"] == BackendStatus(False, "ProbeFailed", "probe broke")
    handlers = json.loads(st.info["handlers"])
    assert handlers["kata"] == {"ready": False, "reason": "ProbeFailed: probe broke"}
    assert handlers[""]["ready"] is True
    assert st.info["podCIDR"] == ""


async def test_the_pod_cidr_is_kept_across_restarts(rig: Rig) -> None:
    await rig.runtime.update_runtime_config("10.1.0.0/16")
    await rig.runtime.update_runtime_config("")  # empty: unchanged
    assert rig.runtime.node.pod_cidr == "10.1.0.0/16"
    runtime = await rig.restart()
    assert runtime.node.pod_cidr == "10.1.0.0/16"
    assert (await runtime.status(verbose=True)).info["podCIDR"] == "10.1.0.0/16"


async def test_a_restart_keeps_names_states_and_running_containers(rig: Rig) -> None:
    pod = await rig.pod()
    run = await rig.started(pod, "run")
    made = await rig.container(pod, "made")
    later = await rig.started(pod, "later", "sh", "-c", "sleep 1; exit 5")
    runtime = await rig.restart()
    states = {c.id: c.state for c in runtime.ctx.containers.live()}
    assert states[run] is ContainerState.RUNNING and states[made] is ContainerState.CREATED
    with pytest.raises(AlreadyExists):  # the names are held again
        await rig.pod()
    with pytest.raises(AlreadyExists):
        await rig.container(pod, "run")
    # A running container is watched again (or its exit while down was recorded).
    await until(lambda: runtime.containers.status(later).state is ContainerState.EXITED)
    assert runtime.containers.status(later).exit_code == 5
    await runtime.containers.stop(run, 10)
    assert runtime.containers.status(run).exit_code == 143


async def test_an_exit_while_down_is_recorded_at_start(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.started(pod, "c", "sh", "-c", "exit 6")
    await until(lambda: rig.runtime.containers.status(cid).state is ContainerState.EXITED)
    # Recorded in the fake's exit file; the database row says RUNNING, as after a crash
    # between the exit and its commit.
    await rig.runtime.ctx.containers.update(cid, lambda c: c.evolve(state=ContainerState.RUNNING))
    runtime = await rig.restart()
    c = runtime.containers.status(cid)
    assert (c.state, c.exit_code, c.reason) == (ContainerState.EXITED, 6, "Error")


async def test_half_created_objects_are_rolled_back_at_start(rig: Rig) -> None:
    pod = await rig.pod()
    ctx = rig.runtime.ctx
    sb = ctx.sandboxes.get(pod)
    ghost_pod = Sandbox(
        id="e" * 64,
        config=pod_config("ghost"),
        runtime_handler="",
        created_at=1,
        phase=Phase.CREATING,
    )
    image = rig.images.get(container_config("g", "busybox").image)
    assert image is not None
    ghost_ctr = Container(
        id="f" * 64,
        sandbox_id=sb.id,
        config=container_config("g", "busybox"),
        image_id=image.id,
        image_ref=image.id,
        created_at=1,
        phase=Phase.CREATING,
    )
    await ctx.sandboxes.put(ghost_pod)
    await ctx.containers.put(ghost_ctr)
    (rig.root / "fake" / ghost_ctr.id).mkdir(parents=True)  # what the backend had made
    runtime = await rig.restart()
    assert runtime.settled is not None
    await runtime.settled  # rollbacks run in the background: invisible records only
    assert rig.backend.called("delete_container") == [ghost_ctr.id]
    assert rig.backend.called("remove_sandbox") == [ghost_pod.id]
    assert not (rig.root / "fake" / ghost_ctr.id).exists()
    assert runtime.ctx.sandboxes.peek(ghost_pod.id) is None
    assert runtime.ctx.containers.peek(ghost_ctr.id) is None
    assert [s.id for s in runtime.ctx.sandboxes.live()] == [pod]
    await rig.pod("ghost")  # the half-made pod's name was never held
    await rig.container(pod, "g")


async def test_a_start_cut_short_after_the_process_started_is_running_after_restart(
    rig: Rig,
) -> None:
    """A crash between the runtime's start and its commit leaves a CREATED record of a
    running process: startup finds it started, and watches it."""
    pod = await rig.pod()
    cut = await rig.container(pod, "cut", "sh", "-c", "sleep 1; exit 4")
    never = await rig.container(pod, "never")
    await rig.backend.start_container(rig.runtime.ctx.containers.get(cut))  # no commit
    runtime = await rig.restart()
    c = runtime.containers.status(cut)
    assert c.state is ContainerState.RUNNING and c.started_at > 0
    assert runtime.containers.status(never).state is ContainerState.CREATED
    await until(lambda: runtime.containers.status(cut).state is ContainerState.EXITED)
    assert runtime.containers.status(cut).exit_code == 4  # watched: its exit is recorded
    await runtime.containers.start(never)
    assert runtime.containers.status(never).state is ContainerState.RUNNING


async def test_a_container_that_cannot_be_recovered_does_not_stop_the_start(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    pod = await rig.pod()
    cid = await rig.started(pod, "run")
    runtime = await rig.restart(fail={"recover"})
    assert runtime.containers.status(cid).state is ContainerState.RUNNING  # as recorded
    assert f"cannot recover container {cid}" in caplog.text
    await rig.container(pod, "more")  # and the runtime serves


async def test_startup_serves_before_its_sweep_which_spares_what_rpcs_make(rig: Rig) -> None:
    """The orphan sweep runs in the background. Whatever is created while it runs has a
    record before it has host objects, so the sweep never takes it for an orphan."""
    pod = await rig.pod()
    running = await rig.started(pod, "run")
    orphan = rig.root / "fake" / ("a" * 64)
    orphan.mkdir(parents=True)  # host state whose record is gone
    runtime = await rig.restart(hold={"reconcile"})
    assert runtime.settled is not None and not runtime.settled.done()
    # Served meanwhile: state, names and running containers are all there.
    assert runtime.containers.status(running).state is ContainerState.RUNNING
    with pytest.raises(AlreadyExists):
        await rig.container(pod, "run")
    made = await rig.container(pod, "made-during-the-sweep")
    assert (rig.root / "fake" / made).is_dir()
    rig.backend.gate.set()  # type: ignore[union-attr]
    await runtime.settled
    assert not orphan.exists()
    assert (rig.root / "fake" / made).is_dir()
    await runtime.containers.start(made)
    assert runtime.containers.status(made).state is ContainerState.RUNNING


async def test_close_lets_an_inflight_create_finish(rig: Rig) -> None:
    pod = await rig.pod()
    rig.backend.gate = asyncio.Event()
    create = asyncio.create_task(rig.container(pod, "c"))
    await until(lambda: rig.backend.called("create_container"), what="the create")
    closing = asyncio.create_task(rig.runtime.close(timeout=10))
    await asyncio.sleep(0)  # one loop step: close runs up to its wait
    assert not closing.done()  # waiting for the create
    rig.backend.gate.set()
    await closing
    cid = await create
    assert rig.runtime.ctx.containers.peek(cid) is not None
    assert rig.runtime.ctx.containers.get(cid).phase is Phase.LIVE
