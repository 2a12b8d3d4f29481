"""ContainerManager over the fake backend: state transitions, names, rollback, events."""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import pytest

from cri_async.core.containers import stop_signal_number
from cri_async.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cri_async.core.events import EventType
from cri_async.core.filters import Filter
from cri_async.core.model import (
    ContainerMetadata,
    ContainerSecurity,
    ContainerState,
    ContainerUser,
    IDMapping,
    ImageSpec,
    NamespaceMode,
    NamespaceOptions,
    Phase,
    Resources,
    SandboxSecurity,
    UserNamespace,
)
from cri_async.core.ports import ExecResult
from tests.support.poll import until

from .rig import Broken, Rig, container_config

CREATED, STARTED, STOPPED, DELETED = (
    EventType.CREATED,
    EventType.STARTED,
    EventType.STOPPED,
    EventType.DELETED,
)


async def exited(rig: Rig, cid: str) -> None:
    await until(
        lambda: rig.runtime.containers.status(cid).state is ContainerState.EXITED,
        what=f"{cid[:12]} to exit",
    )


# -- create ----------------------------------------------------------------------------------


async def test_create_records_a_created_container_and_publishes_it(rig: Rig) -> None:
    rig.collect()
    pod = await rig.pod(log_directory=str(rig.root / "logs"))
    cid = await rig.container(pod, "app", log_path="app/0.log", labels={"tier": "web"})
    c = rig.runtime.containers.status(cid)
    assert (c.state, c.phase, c.sandbox_id, c.pid) == (ContainerState.CREATED, Phase.LIVE, pod, 0)
    assert c.log_path == str(rig.root / "logs" / "app" / "0.log")
    image = rig.images.get(c.config.image)
    assert image is not None and (c.image_id, c.image_ref) == (image.id, image.repo_digests[0])
    assert c.created_at > 0 and c.user == ContainerUser(0, 0)  # no image USER: root
    assert rig.backend.called("create_container") == [cid]
    assert await rig.seen(3) == [(pod, CREATED), (pod, STARTED), (cid, CREATED)]
    ev = rig.events[2]
    assert ev.sandbox is not None and ev.sandbox.id == pod
    assert [x.id for x in ev.containers] == [cid]


async def test_absolute_log_paths_are_kept_and_users_come_from_image_or_config(rig: Rig) -> None:
    pod = await rig.pod(log_directory=str(rig.root / "logs"))
    abs_log = await rig.container(pod, "a", log_path="/var/log/x.log", image="owned")
    c = rig.runtime.containers.status(abs_log)
    assert c.log_path == "/var/log/x.log"
    assert c.user == ContainerUser(uid=1234, gid=0)  # the image's USER
    sec = ContainerSecurity(run_as_user=7, run_as_group=8, supplemental_groups=(9,))
    own = await rig.container(pod, "b", image="owned", security=sec)
    assert rig.runtime.containers.status(own).user == ContainerUser(7, 8, (9,))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"metadata": ContainerMetadata(name="")}, InvalidArgument, "metadata.name"),
        ({"metadata": ContainerMetadata(name="a/b")}, InvalidArgument, "must not contain"),
        ({"image": ImageSpec(image="")}, InvalidArgument, "container image must not be empty"),
        ({"stop_signal": "SIGNOPE"}, InvalidArgument, "unknown stop signal 'SIGNOPE'"),
        ({"labels": {"": "x"}}, InvalidArgument, "empty key"),
        ({"image": ImageSpec(image="alpine")}, NotFound, "image 'alpine' not found; pull it"),
        (
            {"security": ContainerSecurity(run_as_group=1002)},
            InvalidArgument,
            "security_context.run_as_group 1002 is set without run_as_user",
        ),
    ],
)
async def test_bad_creates_change_nothing(
    rig: Rig, change: dict[str, object], error: type[Exception], message: str
) -> None:
    pod = await rig.pod()
    cfg = dataclasses.replace(container_config("c", "busybox"), **change)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        await rig.runtime.containers.create(pod, cfg)
    assert rig.backend.called("create_container") == []
    assert list(rig.runtime.ctx.containers) == []


async def test_create_needs_a_ready_sandbox(rig: Rig) -> None:
    with pytest.raises(NotFound, match="pod sandbox 'nope' not found"):
        await rig.container("nope", "c")
    with pytest.raises(InvalidArgument, match="pod_sandbox_id must not be empty"):
        await rig.container("", "c")
    pod = await rig.pod()
    await rig.runtime.sandboxes.stop(pod)
    with pytest.raises(FailedPrecondition, match=f"pod sandbox {pod} is not ready"):
        await rig.container(pod, "c")
    assert rig.backend.called("create_container") == []


async def test_a_held_name_is_already_exists_and_another_attempt_is_not(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.container(pod, "c")
    with pytest.raises(AlreadyExists, match=f"name 'c_web_0' is already in use by container {cid}"):
        await rig.container(pod, "c")
    again = await rig.container(pod, "c", metadata=ContainerMetadata(name="c", attempt=1))
    assert again != cid
    other_pod = await rig.pod("db")
    assert await rig.container(other_pod, "c") not in (cid, again)


async def test_concurrent_creates_of_one_name_share_one_backend_create(rig: Rig) -> None:
    pod = await rig.pod()
    rig.backend.gate = asyncio.Event()
    tasks = [asyncio.create_task(rig.container(pod, "c")) for _ in range(4)]
    await until(lambda: rig.backend.called("create_container"), what="the first create")
    rig.backend.gate.set()
    ids = await asyncio.gather(*tasks)
    assert len(set(ids)) == 1
    assert rig.backend.called("create_container") == ids[:1]
    assert [c.id for c in rig.runtime.containers.list(Filter())] == ids[:1]


async def test_a_cancelled_create_finishes_and_its_retry_gets_the_id(rig: Rig) -> None:
    pod = await rig.pod()
    rig.backend.gate = asyncio.Event()
    first = asyncio.create_task(rig.container(pod, "c"))
    await until(lambda: rig.backend.called("create_container"), what="the first create")
    first.cancel()  # kubelet's deadline expired
    with pytest.raises(asyncio.CancelledError):
        await first
    rig.backend.gate.set()
    retry = await rig.container(pod, "c")
    assert rig.backend.called("create_container") == [retry]
    assert rig.runtime.containers.status(retry).state is ContainerState.CREATED


async def test_a_failed_backend_create_is_rolled_back_and_frees_the_name(rig: Rig) -> None:
    pod = await rig.pod()
    rig.collect()
    rig.backend.fail = {"create_container"}
    with pytest.raises(Broken):
        await rig.container(pod, "c")
    [cid] = rig.backend.called("create_container")
    assert rig.backend.called("delete_container") == [cid]
    assert rig.runtime.ctx.containers.peek(cid) is None
    assert not (rig.root / "fake" / cid).exists()
    assert [i for i, _ in await rig.store.load("container")] == []
    rig.backend.fail.clear()
    again = await rig.container(pod, "c")
    assert await rig.seen(1) == [(again, CREATED)]  # nothing for the failed attempt


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a container whose create was in flight while its pod was removed is "
    "committed anyway: it is listed with a pod id that no longer exists and its backend "
    "state is never deleted (the pod removal only sees LIVE containers)",
)
async def test_a_create_racing_the_pods_removal_leaves_no_orphan(rig: Rig) -> None:
    pod = await rig.pod()
    rig.backend.gate = asyncio.Event()
    create = asyncio.create_task(rig.container(pod, "c"))
    await until(lambda: rig.backend.called("create_container"), what="the create")
    await rig.runtime.sandboxes.remove(pod)
    rig.backend.gate.set()
    await asyncio.gather(create, return_exceptions=True)
    assert rig.runtime.containers.list(Filter()) == []
    assert list((rig.root / "fake").iterdir()) == []


# -- start, exit -------------------------------------------------------------------------------


async def test_start_runs_the_container(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.container(pod, "c")
    rig.collect()
    await rig.runtime.containers.start(cid)
    c = rig.runtime.containers.status(cid)
    assert c.state is ContainerState.RUNNING and c.pid > 0 and c.started_at >= c.created_at
    assert await rig.seen(1) == [(cid, STARTED)]
    with pytest.raises(FailedPrecondition, match="is running; only a created container"):
        await rig.runtime.containers.start(cid)


async def test_a_start_failure_is_recorded_as_an_exit(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.container(pod, "c", "/no/such/binary")
    rig.collect()
    with pytest.raises(FailedPrecondition, match=f"failed to start container {cid}"):
        await rig.runtime.containers.start(cid)
    c = rig.runtime.containers.status(cid)
    assert (c.state, c.exit_code, c.reason) == (ContainerState.EXITED, 128, "StartError")
    assert c.message and c.finished_at > 0
    assert await rig.seen(1) == [(cid, STOPPED)]
    with pytest.raises(FailedPrecondition, match="is exited"):
        await rig.runtime.containers.start(cid)


async def test_start_needs_a_ready_sandbox(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.container(pod, "c")
    await rig.runtime.sandboxes.stop(pod)
    with pytest.raises(FailedPrecondition, match=f"pod sandbox {pod} of container {cid}"):
        await rig.runtime.containers.start(cid)
    with pytest.raises(NotFound):
        await rig.runtime.containers.start("f" * 64)


async def test_exits_are_recorded_with_code_and_reason(rig: Rig) -> None:
    pod = await rig.pod()
    rig.collect()
    ok = await rig.started(pod, "ok", "sh", "-c", "exit 0")
    bad = await rig.started(pod, "bad", "sh", "-c", "exit 3")
    for cid in (ok, bad):
        await exited(rig, cid)
    got = {
        c.id: (c.exit_code, c.reason)
        for c in rig.runtime.containers.list(Filter(state=ContainerState.EXITED))
    }
    assert got == {ok: (0, "Completed"), bad: (3, "Error")}
    events = await rig.seen(4)
    assert sorted(e for e in events if e[1] is STOPPED) == sorted([(ok, STOPPED), (bad, STOPPED)])


async def test_an_exit_of_an_unknown_container_is_ignored(rig: Rig) -> None:
    from cri_async.core.ports import ExitStatus

    rig.collect()
    await rig.runtime.containers.record_exit("f" * 64, ExitStatus(1, 1))
    assert rig.events == [] and list(rig.runtime.ctx.containers) == []


# -- stop --------------------------------------------------------------------------------------


async def test_stop_sends_sigterm_and_records_the_exit(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.started(pod, "c")
    rig.collect()
    await rig.runtime.containers.stop(cid, 10)
    c = rig.runtime.containers.status(cid)
    assert (c.state, c.exit_code, c.reason) == (ContainerState.EXITED, 143, "Error")
    assert rig.backend.kills == [(cid, signal.SIGTERM)]
    assert await rig.seen(1) == [(cid, STOPPED)]


async def test_the_stop_signal_comes_from_the_config_then_the_image(rig: Rig) -> None:
    pod = await rig.pod()
    by_image = await rig.started(pod, "a", image="quitter")
    by_config = await rig.started(pod, "b", image="quitter", stop_signal="SIGUSR1")
    for cid in (by_image, by_config):
        await rig.runtime.containers.stop(cid, 10)
    assert rig.backend.kills == [(by_image, signal.SIGQUIT), (by_config, signal.SIGUSR1)]
    assert rig.runtime.containers.status(by_image).exit_code == 128 + signal.SIGQUIT


async def test_stop_escalates_to_sigkill_after_the_timeout(rig: Rig) -> None:
    pod = await rig.pod()
    stubborn = await rig.started(pod, "s", "sh", "-c", "trap '' TERM; sleep infinity")
    await rig.runtime.containers.stop(stubborn, 0.1)
    assert rig.backend.kills == [(stubborn, signal.SIGTERM), (stubborn, signal.SIGKILL)]
    assert rig.runtime.containers.status(stubborn).exit_code == 137
    at_once = await rig.started(pod, "k")
    await rig.runtime.containers.stop(at_once, 0)  # no grace period: SIGKILL only
    assert rig.backend.kills[2:] == [(at_once, signal.SIGKILL)]


async def test_stopping_what_does_not_run_is_a_no_op(rig: Rig) -> None:
    pod = await rig.pod()
    created = await rig.container(pod, "c")
    done = await rig.started(pod, "d", "sh", "-c", "exit 0")
    await exited(rig, done)
    rig.collect()
    for cid in (created, done, done):
        await rig.runtime.containers.stop(cid, 10)
    assert rig.backend.kills == [] and rig.events == []
    assert rig.runtime.containers.status(created).state is ContainerState.CREATED
    # An unknown container is already stopped: kubelet retries stops (critest Idempotence).
    await rig.runtime.containers.stop("nope", 10)
    with pytest.raises(InvalidArgument, match="container_id must not be empty"):
        await rig.runtime.containers.stop("", 10)
    with pytest.raises(NotFound, match="container 'nope' not found"):
        rig.runtime.containers.status("nope")


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a numeric image StopSignal (Docker allows STOPSIGNAL 9; containerd parses "
    "numbers) makes StopContainer fail with InvalidArgument and the container keeps running",
)
async def test_a_numeric_image_stop_signal_is_a_signal_number(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.started(pod, "c", image="numeric-stop")
    await rig.runtime.containers.stop(cid, 10)
    assert rig.backend.kills == [(cid, signal.SIGKILL)]


def test_stop_signal_names() -> None:
    assert stop_signal_number("SIGTERM") == stop_signal_number("term") == signal.SIGTERM
    assert stop_signal_number("SIGRTMIN+2") == signal.SIGRTMIN + 2
    assert stop_signal_number("RTMAX-1") == signal.SIGRTMAX - 1
    with pytest.raises(InvalidArgument, match="unknown stop signal 'SIGFOO'"):
        stop_signal_number("FOO")


@pytest.mark.xfail(
    strict=True,
    reason="BUG: names of signal-module constants that are not signals (SIG_DFL, SIG_IGN, "
    "SIG_BLOCK) are accepted as stop signals 0, 1, 0 instead of InvalidArgument",
)
def test_signal_module_constants_are_not_stop_signals() -> None:
    for name in ("SIG_DFL", "SIG_IGN", "SIG_BLOCK"):
        with pytest.raises(InvalidArgument):
            stop_signal_number(name)


# -- remove ------------------------------------------------------------------------------------


async def test_remove_kills_deletes_and_frees_the_name(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.started(pod, "c")
    rig.collect()
    await rig.runtime.containers.remove(cid)
    assert rig.backend.kills == [(cid, signal.SIGKILL)]
    assert rig.backend.called("delete_container") == [cid]
    with pytest.raises(NotFound):
        rig.runtime.containers.status(cid)
    assert [i for i, _ in await rig.store.load("container")] == []
    assert await rig.seen(2) == [(cid, STOPPED), (cid, DELETED)]
    assert rig.events[1].sandbox is not None and rig.events[1].containers == ()
    assert await rig.container(pod, "c") != cid  # the name is free again


async def test_remove_is_idempotent_and_concurrent_removes_run_once(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.started(pod, "c")
    rig.collect()
    await asyncio.gather(*(rig.runtime.containers.remove(cid) for _ in range(3)))
    await rig.runtime.containers.remove(cid)
    await rig.runtime.containers.remove("f" * 64)  # never existed: nothing to do
    assert rig.backend.called("delete_container") == [cid]
    assert [e for e in await rig.seen(2) if e[1] is DELETED] == [(cid, DELETED)]
    with pytest.raises(InvalidArgument, match="container_id must not be empty"):
        await rig.runtime.containers.remove("")


# -- queries and in-container operations -------------------------------------------------------


async def test_list_filters_by_id_state_sandbox_and_labels(rig: Rig) -> None:
    pod, other = await rig.pod("a"), await rig.pod("b")
    run = await rig.started(pod, "run", labels={"tier": "web"})
    made = await rig.container(pod, "made", labels={"tier": "db"})
    elsewhere = await rig.container(other, "x", labels={"tier": "web"})

    def ids(**flt: object) -> set[str]:
        return {c.id for c in rig.runtime.containers.list(Filter(**flt))}  # type: ignore[arg-type]

    assert ids() == {run, made, elsewhere}
    assert ids(state=ContainerState.RUNNING) == {run}
    assert ids(sandbox_id=pod[:10]) == {run, made}
    assert ids(labels={"tier": "web"}) == {run, elsewhere}
    assert ids(id=made[:12]) == {made}
    assert ids(id="zz") == set()
    assert rig.runtime.containers.status(run[:16]).id == run


async def test_exec_sync_needs_a_running_container_and_a_command(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.container(pod, "c")
    with pytest.raises(FailedPrecondition, match="is created, not running"):
        await rig.runtime.containers.exec_sync(cid, ["true"], None)
    await rig.runtime.containers.start(cid)
    with pytest.raises(InvalidArgument, match="cmd must not be empty"):
        await rig.runtime.containers.exec_sync(cid, [], None)
    got = await rig.runtime.containers.exec_sync(cid, ["sh", "-c", "echo hi; exit 4"], 5)
    assert got == ExecResult(4, b"hi\n", b"")


async def test_resources_are_updated_only_before_the_exit(rig: Rig) -> None:
    pod = await rig.pod()
    cid = await rig.container(pod, "c")
    wanted = Resources(cpu_shares=512, memory_limit_in_bytes=64 << 20)
    await rig.runtime.containers.update_resources(cid, wanted, {})
    assert rig.runtime.containers.status(cid).resources == wanted
    done = await rig.started(pod, "d", "sh", "-c", "exit 0")
    await exited(rig, done)
    with pytest.raises(FailedPrecondition, match="is exited; cannot update it"):
        await rig.runtime.containers.update_resources(done, wanted, {})
    with pytest.raises(FailedPrecondition, match="is not running"):
        await rig.runtime.containers.reopen_log(cid)


async def test_a_containers_user_namespace_is_its_pods(rig: Rig) -> None:
    m = IDMapping(host_id=1000, container_id=0, length=100000)
    pod_ns = UserNamespace(NamespaceMode.POD, (m,), (m,))
    pod = await rig.pod(security=SandboxSecurity(namespaces=NamespaceOptions(userns=pod_ns)))
    same = ContainerSecurity(namespaces=NamespaceOptions(userns=pod_ns))
    assert await rig.container(pod, "same", security=same)
    assert await rig.container(pod, "unset")  # kubelet may leave it to the pod
    other = UserNamespace(NamespaceMode.POD, (IDMapping(2000, 0, 100000),), (m,))
    for name, userns, message in (
        ("other", other, "differ from the pod sandbox's"),
        ("node", UserNamespace(NamespaceMode.NODE), "differ from the pod sandbox's"),
        ("ctr", UserNamespace(NamespaceMode.CONTAINER), "mode CONTAINER is not supported"),
    ):
        sec = ContainerSecurity(namespaces=NamespaceOptions(userns=userns))
        with pytest.raises(InvalidArgument, match=message):
            await rig.container(pod, name, security=sec)
