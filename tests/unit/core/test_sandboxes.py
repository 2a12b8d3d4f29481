"""SandboxManager over the fake backend: run, stop, remove, names, rollback, events."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import pytest

from cri_async.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from cri_async.core.events import EventType
from cri_async.core.filters import Filter
from cri_async.core.model import (
    ContainerState,
    IDMapping,
    NamespaceMode,
    NamespaceOptions,
    PodMetadata,
    Resources,
    SandboxConfig,
    SandboxSecurity,
    SandboxState,
    UserNamespace,
)
from cri_async.core.ports import BackendStatus, HandlerFeatures
from cri_async.core.sandboxes import _with_overhead, pod_hostname
from tests.support.poll import until

from .rig import Broken, Rig, pod_config

CREATED, STARTED, STOPPED, DELETED = (
    EventType.CREATED,
    EventType.STARTED,
    EventType.STOPPED,
    EventType.DELETED,
)


async def test_run_makes_a_ready_sandbox_and_publishes_it(rig: Rig) -> None:
    rig.collect()
    pod = await rig.pod(labels={"app": "web"})
    sb = rig.runtime.sandboxes.status(pod)
    assert (sb.state, sb.runtime_handler, sb.metadata.name) == (SandboxState.READY, "", "web")
    assert sb.network.ip.startswith("198.1") and sb.created_at > 0  # the fake's address
    assert rig.backend.called("create_sandbox") == [pod]
    assert await rig.seen(2) == [(pod, CREATED), (pod, STARTED)]
    assert all(e.sandbox is not None and e.sandbox.id == pod for e in rig.events)


def test_a_pod_without_a_hostname_gets_the_nodes() -> None:
    meta = PodMetadata("p", "u", "ns")
    assert pod_hostname(SandboxConfig(meta)) == os.uname().nodename
    assert pod_hostname(SandboxConfig(meta, hostname="web-0")) == "web-0"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SandboxConfig(PodMetadata("", "u", "ns")), "pod sandbox metadata.name must not be empty"),
        (SandboxConfig(PodMetadata("p", "u", "")), "metadata.namespace must not be empty"),
        (SandboxConfig(PodMetadata("p", "", "ns")), "metadata.uid must not be empty"),
        (SandboxConfig(PodMetadata("p", "u", "ns"), hostname="-bad"), "not a valid host name"),
        (SandboxConfig(PodMetadata("p", "u", "ns"), annotations={"": "x"}), "empty key"),
        (
            SandboxConfig(PodMetadata("p", "u", "ns"), security=SandboxSecurity(run_as_group=5)),
            "security_context.run_as_group 5 is set without run_as_user",
        ),
    ],
)
async def test_bad_runs_change_nothing(rig: Rig, config: SandboxConfig, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await rig.runtime.sandboxes.run(config, "")
    assert rig.backend.calls == [] and list(rig.runtime.ctx.sandboxes) == []


async def test_run_needs_a_configured_and_ready_handler(rig: Rig) -> None:
    with pytest.raises(InvalidArgument, match="runtime handler 'kata' is not configured"):
        await rig.runtime.sandboxes.run(pod_config("p"), "kata")
    rig.backend.ready = False
    with pytest.raises(FailedPrecondition, match="handler '' is not ready: Broken: told so"):
        await rig.runtime.sandboxes.run(pod_config("p"), "")
    assert rig.backend.calls == []


async def test_a_held_name_is_already_exists(rig: Rig) -> None:
    pod = await rig.pod()
    with pytest.raises(
        AlreadyExists, match=f"'web_default_uid-web_0' is already in use by pod sandbox {pod}"
    ):
        await rig.pod()
    retry = SandboxConfig(PodMetadata("web", "uid-web", "default", attempt=1))
    assert await rig.runtime.sandboxes.run(retry, "") != pod


async def test_concurrent_runs_of_one_name_share_one_backend_create(rig: Rig) -> None:
    rig.backend.gate = asyncio.Event()
    tasks = [asyncio.create_task(rig.pod()) for _ in range(4)]
    await until(lambda: rig.backend.called("create_sandbox"), what="the first create")
    rig.backend.gate.set()
    ids = await asyncio.gather(*tasks)
    assert len(set(ids)) == 1 and rig.backend.called("create_sandbox") == ids[:1]


async def test_a_failed_backend_create_is_rolled_back_and_frees_the_name(rig: Rig) -> None:
    rig.collect()
    rig.backend.fail = {"create_sandbox"}
    with pytest.raises(Broken):
        await rig.pod()
    [sid] = rig.backend.called("create_sandbox")
    assert rig.backend.called("remove_sandbox") == [sid]
    assert rig.runtime.ctx.sandboxes.peek(sid) is None
    assert [i for i, _ in await rig.store.load("pod sandbox")] == []
    rig.backend.fail.clear()
    pod = await rig.pod()
    assert await rig.seen(2) == [(pod, CREATED), (pod, STARTED)]


async def test_stop_kills_the_containers_and_marks_the_pod_not_ready(rig: Rig) -> None:
    pod = await rig.pod()
    run = await rig.started(pod, "run")
    made = await rig.container(pod, "made")
    rig.collect()
    await rig.runtime.sandboxes.stop(pod)
    assert rig.backend.kills == [(run, signal.SIGKILL)]  # outright, as containerd does
    assert rig.runtime.containers.status(run).exit_code == 137
    assert rig.runtime.containers.status(made).state is ContainerState.CREATED
    assert rig.runtime.sandboxes.status(pod).state is SandboxState.NOTREADY
    assert rig.backend.called("stop_sandbox") == [pod]
    await rig.runtime.sandboxes.stop(pod)  # again: the backend is asked, nothing changes
    assert rig.backend.called("stop_sandbox") == [pod, pod]
    assert await rig.seen(2) == [(run, STOPPED), (pod, STOPPED)]
    stopped = rig.events[1]
    assert stopped.sandbox is not None and stopped.sandbox.state is SandboxState.NOTREADY
    await rig.runtime.sandboxes.stop("nope")  # unknown: already stopped (kubelet retries)
    with pytest.raises(NotFound, match="pod sandbox 'nope' not found"):
        rig.runtime.sandboxes.status("nope")


async def test_remove_takes_containers_then_the_pod_and_frees_the_name(rig: Rig) -> None:
    pod = await rig.pod()
    run = await rig.started(pod, "run")
    made = await rig.container(pod, "made")
    rig.collect()
    await rig.runtime.sandboxes.remove(pod)
    assert sorted(rig.backend.called("delete_container")) == sorted([run, made])
    assert rig.backend.called("remove_sandbox") == [pod]
    assert rig.runtime.sandboxes.list(Filter()) == []
    assert rig.runtime.containers.list(Filter()) == []
    assert [i for i, _ in await rig.store.load("pod sandbox")] == []
    events = await rig.seen(5)
    assert events[:2] == [(run, STOPPED), (pod, STOPPED)]
    assert sorted(events[2:4]) == sorted([(run, DELETED), (made, DELETED)])
    assert events[4:] == [(pod, DELETED)]
    assert await rig.pod() != pod  # the name is free again


async def test_remove_is_idempotent_and_concurrent_removes_run_once(rig: Rig) -> None:
    pod = await rig.pod()
    await asyncio.gather(*(rig.runtime.sandboxes.remove(pod) for _ in range(3)))
    await rig.runtime.sandboxes.remove(pod)
    await rig.runtime.sandboxes.remove("f" * 64)
    assert rig.backend.called("remove_sandbox") == [pod]
    with pytest.raises(InvalidArgument, match="pod_sandbox_id must not be empty"):
        await rig.runtime.sandboxes.remove("")


async def test_pod_resources_need_a_backend_that_has_them(rig: Rig) -> None:
    pod = await rig.pod()
    with pytest.raises(Unimplemented, match="handler '' has no pod-level resources"):
        await rig.runtime.sandboxes.update_resources(pod, None, Resources(cpu_shares=2))
    await rig.runtime.sandboxes.stop(pod)
    with pytest.raises(FailedPrecondition, match="is not ready"):
        await rig.runtime.sandboxes.update_resources(pod, None, Resources(cpu_shares=2))


def test_the_pod_cgroup_adds_the_overhead_and_unlimited_stays_unlimited() -> None:
    pod = Resources(cpu_shares=1024, cpu_quota=0, memory_limit_in_bytes=256 << 20)
    overhead = Resources(cpu_shares=64, cpu_quota=5000, memory_limit_in_bytes=32 << 20)
    got = _with_overhead(pod, overhead)
    assert (got.cpu_shares, got.cpu_quota, got.memory_limit_in_bytes) == (1088, 0, 288 << 20)
    assert _with_overhead(pod, None) is pod


async def test_list_filters_by_id_state_and_labels(rig: Rig) -> None:
    a = await rig.pod("a", labels={"app": "web"})
    b = await rig.pod("b", labels={"app": "db"})
    await rig.runtime.sandboxes.stop(b)

    def ids(**flt: object) -> set[str]:
        return {s.id for s in rig.runtime.sandboxes.list(Filter(**flt))}  # type: ignore[arg-type]

    assert ids() == {a, b}
    assert ids(state=SandboxState.READY) == {a}
    assert ids(labels={"app": "db"}) == {b}
    assert ids(id=a[:8]) == {a} and ids(id="zz") == set()
    assert rig.runtime.sandboxes.status(b[:16]).id == b


# -- user namespaces ----------------------------------------------------------------------

_MAP = IDMapping(host_id=1000, container_id=0, length=100000)


def _userns_pod(userns: UserNamespace) -> SandboxConfig:
    ns = NamespaceOptions(userns=userns)
    return SandboxConfig(PodMetadata("p", "u", "ns"), security=SandboxSecurity(namespaces=ns))


@pytest.mark.parametrize(
    ("userns", "message"),
    [
        (UserNamespace(NamespaceMode.POD, (_MAP, _MAP), (_MAP,)), "uids has 2 mappings"),
        (UserNamespace(NamespaceMode.POD, (_MAP,), ()), "gids has 0 mappings"),
        (
            UserNamespace(NamespaceMode.POD, (IDMapping(1000, 1, 100000),), (_MAP,)),
            "uids maps container id 1: it must map container id 0",
        ),
        (UserNamespace(NamespaceMode.POD, (IDMapping(1000, 0, 0),), (_MAP,)), "host range"),
        (UserNamespace(NamespaceMode.CONTAINER), "mode CONTAINER is not supported"),
        (UserNamespace(NamespaceMode.TARGET), "mode TARGET is not supported"),
        (UserNamespace(NamespaceMode.NODE, (_MAP,), (_MAP,)), "mode NODE takes no"),
    ],
)
async def test_user_namespace_options_are_checked(
    rig: Rig, userns: UserNamespace, message: str
) -> None:
    """As kubelet sends them (critest UserNamespaces): POD with exactly one uid and one gid
    mapping of container id 0, or NODE; anything else is INVALID_ARGUMENT naming the field."""
    with pytest.raises(InvalidArgument, match=message) as err:
        await rig.runtime.sandboxes.run(_userns_pod(userns), "")
    assert "namespace_options.userns_options" in str(err.value)
    assert rig.backend.calls == [] and list(rig.runtime.ctx.sandboxes) == []


async def test_user_namespaces_need_a_handler_that_has_them(rig: Rig) -> None:
    pod_userns = UserNamespace(NamespaceMode.POD, (_MAP,), (_MAP,))
    assert await rig.runtime.sandboxes.run(_userns_pod(pod_userns), "")  # the fake has them
    real_probe = rig.backend.probe

    async def without() -> BackendStatus:
        return replace(await real_probe(), features=HandlerFeatures(user_namespaces=False))

    rig.backend.probe = without  # type: ignore[method-assign]
    cfg = replace(_userns_pod(pod_userns), metadata=PodMetadata("q", "u2", "ns"))
    with pytest.raises(FailedPrecondition, match="user_namespaces: false"):
        await rig.runtime.sandboxes.run(cfg, "")
    node = replace(
        _userns_pod(UserNamespace(NamespaceMode.NODE)), metadata=PodMetadata("r", "u3", "ns")
    )
    await rig.runtime.sandboxes.run(node, "")
