"""The pod/container lifecycle over a real unix socket, shaped like crictl's calls."""

import asyncio
import json
import signal
from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config
from cri_async.core.model import Container
from cri_async.logs.crilog import Stream
from cri_async.testing import CRIServer
from tests.support.poll import until

from .conftest import new_pod, wait_log, wait_state

pytestmark = pytest.mark.socket


async def test_version_and_info(cli: CRIClient) -> None:
    v = await cli.version()
    assert (v.runtime_name, v.runtime_api_version) == ("cri-async", "v1")
    st = await cli.runtime.Status(pb.StatusRequest(verbose=True))
    conds = {c.type: c.status for c in st.status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    assert [h.name for h in st.runtime_handlers] == [""]
    assert json.loads(st.info["handlers"])[""]["ready"] is True
    rc = await cli.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == pb.CGROUPFS


async def test_full_lifecycle(cli: CRIClient, tmp_path: Path) -> None:
    pod, pcfg = await new_pod(cli, logdir=tmp_path / "pods", labels={"app": "web"})
    assert len(pod) == 64 and int(pod, 16) >= 0
    cfg = container_config(
        "app",
        "busybox",
        command=["sh", "-c", "echo started; echo oops >&2; sleep infinity"],
        log_path="app/0.log",
        labels={"tier": "front"},
    )
    cid = await cli.create_container(pod, cfg, pcfg)
    st = await cli.container_status(cid)
    assert st.state == pb.CONTAINER_CREATED and st.created_at > 0 and st.started_at == 0
    assert st.log_path == str(tmp_path / "pods/app/0.log")
    assert st.image_id.startswith("sha256:") and st.labels["tier"] == "front"

    await cli.start_container(cid)
    st = await cli.container_status(cid)
    assert st.state == pb.CONTAINER_RUNNING and st.started_at >= st.created_at

    # crictl ps (running only), ps -a, pods, inspect, inspectp
    ps = await cli.runtime.ListContainers(
        pb.ListContainersRequest(
            filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
        )
    )
    assert [c.id for c in ps.containers] == [cid]
    assert ps.containers[0].pod_sandbox_id == pod
    pods = await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert [(p.id, p.state, p.labels["app"]) for p in pods.items] == [
        (pod, pb.SANDBOX_READY, "web")
    ]
    inspect = await cli.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid[:12], verbose=True)
    )
    assert inspect.status.id == cid
    assert json.loads(inspect.info["info"])["sandbox_id"] == pod
    inspectp = await cli.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True)
    )
    assert inspectp.status.network.ip and inspectp.timestamp > 0
    assert [c.id for c in inspectp.containers_statuses] == [cid]

    # logs are real CRI-format files
    expected = {Stream.STDOUT: b"started\n", Stream.STDERR: b"oops\n"}
    assert await wait_log(tmp_path / "pods/app/0.log", expected) == expected

    # crictl stop (SIGTERM -> 143), rm, stopp, rmp
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    st = await cli.container_status(cid)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 143, "Error")
    assert st.finished_at >= st.started_at
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    pods = await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert pods.items[0].state == pb.SANDBOX_NOTREADY
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert not (await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers


async def test_exit_codes_reasons_and_stop_escalation(cli: CRIClient) -> None:
    pod, pcfg = await new_pod(cli)

    async def run(name: str, script: str) -> str:
        cid = await cli.create_container(
            pod, container_config(name, "busybox", command=["sh", "-c", script]), pcfg
        )
        await cli.start_container(cid)
        return cid

    ok = await run("ok", "exit 0")
    bad = await run("bad", "sleep 0.1; exit 7")
    stubborn = await run("stubborn", "trap '' TERM; sleep infinity")
    st = await wait_state(cli, ok, pb.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (0, "Completed")
    st = await wait_state(cli, bad, pb.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (7, "Error")

    # SIGTERM is ignored, so the stop escalates to SIGKILL after the timeout.
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1))
    assert loop.time() - t0 >= 0.9
    st = await cli.container_status(stubborn)
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 137)


async def test_concurrent_stops_shorter_timeout_takes_over(cli: CRIClient, srv: CRIServer) -> None:
    backend = srv.fake()
    real_kill = backend.kill
    signals: list[int] = []

    async def kill(container: Container, sig: int) -> None:
        signals.append(sig)
        await real_kill(container, sig)

    backend.kill = kill  # type: ignore[method-assign]
    pod, pcfg = await new_pod(cli)
    cid = await cli.create_container(
        pod,
        container_config("s", "busybox", command=["sh", "-c", "trap '' TERM; sleep infinity"]),
        pcfg,
    )
    await cli.start_container(cid)
    slow = asyncio.create_task(
        cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=60))
    )
    # The slow stop has sent SIGTERM and waits for an exit that will not come.
    await until(lambda: signal.SIGTERM in signals, what="the first stop's SIGTERM")
    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    await asyncio.wait_for(slow, 5)
    assert (await cli.container_status(cid)).exit_code == 137


async def test_start_failure_is_reported_on_the_container(cli: CRIClient) -> None:
    pod, pcfg = await new_pod(cli)
    cid = await cli.create_container(
        pod, container_config("x", "busybox", command=["/no/such/binary"]), pcfg
    )
    with pytest.raises(GRPCError) as err:
        await cli.start_container(cid)
    assert err.value.status is Status.FAILED_PRECONDITION
    assert "executable file not found" in str(err.value.message)
    st = await cli.container_status(cid)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError")
    with pytest.raises(GRPCError) as err:
        await cli.start_container(cid)
    assert err.value.status is Status.FAILED_PRECONDITION


async def test_image_defaults_and_exec_sync(cli: CRIClient, srv: CRIServer) -> None:
    pod, pcfg = await new_pod(cli)
    # busybox's image CMD is `sh`, an idle shell: it runs until stopped.
    cid = await cli.create_container(pod, container_config("c", "busybox"), pcfg)
    with pytest.raises(GRPCError) as err:
        await cli.exec_sync(cid, ["true"])
    assert err.value.status is Status.FAILED_PRECONDITION
    await cli.start_container(cid)
    await asyncio.sleep(0.05)  # time to exit, were it to: it must not
    assert (await cli.container_status(cid)).state == pb.CONTAINER_RUNNING

    r = await cli.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    r = await cli.exec_sync(cid, ["env"])
    assert b"PATH=/usr/local/sbin" in r.stdout

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(GRPCError) as err:
        await cli.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert err.value.status is Status.DEADLINE_EXCEEDED
    assert loop.time() - t0 < 5

    async def probe(container: object, cmd: object) -> object:
        from cri_async.core.ports import ExecResult

        return ExecResult(0, b"healthy", b"")

    srv.fake().hooks["healthcheck"] = probe  # type: ignore[assignment]
    r = await cli.exec_sync(cid, ["/bin/healthcheck", "--live"])
    assert r.stdout == b"healthy"


async def test_update_resources_and_reopen_log(cli: CRIClient, tmp_path: Path) -> None:
    pod, pcfg = await new_pod(cli, logdir=tmp_path)
    cid = await cli.create_container(
        pod, container_config("c", "busybox", command=["sleep", "infinity"], log_path="c.log"), pcfg
    )
    await cli.start_container(cid)
    await cli.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=1 << 26),
        )
    )
    st = await cli.container_status(cid)
    assert st.resources.linux.cpu_shares == 512
    assert st.resources.linux.memory_limit_in_bytes == 1 << 26
    (tmp_path / "c.log").rename(tmp_path / "c.log.1")
    await cli.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert (tmp_path / "c.log").exists()


async def test_filters(cli: CRIClient) -> None:
    a, acfg = await new_pod(cli, "a", labels={"app": "a", "env": "prod"})
    b, _ = await new_pod(cli, "b", labels={"app": "b", "env": "prod"})
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=b))

    async def pods(f: pb.PodSandboxFilter) -> set[str]:
        r = await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=f))
        return {p.id for p in r.items}

    assert await pods(pb.PodSandboxFilter()) == {a, b}
    assert await pods(pb.PodSandboxFilter(label_selector={"env": "prod"})) == {a, b}
    assert await pods(pb.PodSandboxFilter(label_selector={"env": "prod", "app": "b"})) == {b}
    assert await pods(pb.PodSandboxFilter(label_selector={"env": "dev"})) == set()
    ready = pb.PodSandboxStateValue(state=pb.SANDBOX_READY)
    assert await pods(pb.PodSandboxFilter(state=ready)) == {a}
    assert await pods(pb.PodSandboxFilter(id=a)) == {a}
    assert await pods(pb.PodSandboxFilter(id=a[:8])) == {a}
    assert await pods(pb.PodSandboxFilter(id="f" * 64)) == set()

    c1 = await cli.create_container(a, container_config("c1", "busybox", labels={"k": "1"}), acfg)
    c2 = await cli.create_container(a, container_config("c2", "busybox", labels={"k": "2"}), acfg)
    await cli.start_container(c2)

    async def ctrs(f: pb.ContainerFilter) -> set[str]:
        r = await cli.runtime.ListContainers(pb.ListContainersRequest(filter=f))
        return {c.id for c in r.containers}

    assert await ctrs(pb.ContainerFilter(pod_sandbox_id=a)) == {c1, c2}
    assert await ctrs(pb.ContainerFilter(pod_sandbox_id=a[:10])) == {c1, c2}
    assert await ctrs(pb.ContainerFilter(pod_sandbox_id=b)) == set()
    assert await ctrs(pb.ContainerFilter(label_selector={"k": "2"})) == {c2}
    created = pb.ContainerStateValue(state=pb.CONTAINER_CREATED)
    assert await ctrs(pb.ContainerFilter(state=created)) == {c1}
    assert await ctrs(pb.ContainerFilter(id=c2[:6])) == {c2}

    with pytest.raises(GRPCError) as err:
        await cli.runtime.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector={"bad key": "x"}))
        )
    assert err.value.status is Status.INVALID_ARGUMENT

    # Stream* variants deliver every item exactly once, in chunks.
    got: list[str] = []
    async with cli.runtime.StreamContainers.open() as stream:
        await stream.send_message(pb.StreamContainersRequest(), end=True)
        async for msg in stream:
            got += [c.id for c in msg.containers]
    assert sorted(got) == sorted([c1, c2])


async def test_stream_lists_chunk_many_items(cli: CRIClient) -> None:
    ids = set()
    for i in range(300):
        pod, _ = await new_pod(cli, f"p{i}")
        ids.add(pod)
    chunks: list[int] = []
    seen: list[str] = []
    async with cli.runtime.StreamPodSandboxes.open() as stream:
        await stream.send_message(pb.StreamPodSandboxesRequest(), end=True)
        async for msg in stream:
            chunks.append(len(msg.pod_sandboxes))
            seen += [p.id for p in msg.pod_sandboxes]
    assert len(chunks) >= 2
    assert len(seen) == len(set(seen)) == 300 and set(seen) == ids


async def test_remove_pod_removes_running_containers(cli: CRIClient) -> None:
    pod, pcfg = await new_pod(cli)
    cid = await cli.create_container(
        pod, container_config("c", "busybox", command=["sleep", "infinity"]), pcfg
    )
    await cli.start_container(cid)
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers
    with pytest.raises(GRPCError) as err:
        await cli.container_status(cid)
    assert err.value.status is Status.NOT_FOUND


async def test_container_in_stopped_pod_is_refused(cli: CRIClient) -> None:
    pod, pcfg = await new_pod(cli)
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, container_config("c", "busybox"), pcfg)
    assert err.value.status is Status.FAILED_PRECONDITION


async def test_images(cli: CRIClient) -> None:
    ref = await cli.pull("docker.io/library/busybox:latest")
    st = await cli.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image="busybox"), verbose=True)
    )
    assert st.image.id == ref  # kubelet: image_ref equals Image.id
    assert st.image.repo_tags == ["docker.io/library/busybox:latest"]
    assert json.loads(st.info["info"])["imageSpec"]["config"]["Cmd"] == ["sh"]
    digest_ref = st.image.repo_digests[0]
    assert (await cli.pull(digest_ref)) == ref  # pull by digest
    await cli.pull("busybox:1.36")
    assert (await cli.pull("registry.k8s.io/pause:3.10")) != ref
    imgs = await cli.images.ListImages(pb.ListImagesRequest())
    pause = next(i for i in imgs.images if "registry.k8s.io/pause:3.10" in i.repo_tags)
    assert pause.pinned and pause.uid.value == 65535

    absent = await cli.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="nope")))
    assert not absent.HasField("image")
    with pytest.raises(GRPCError) as err:
        await cli.pull("docker.io/library/does-not-exist:1")
    assert err.value.status is Status.NOT_FOUND
    with pytest.raises(GRPCError) as err:
        await cli.pull("Invalid//Ref")
    assert err.value.status is Status.INVALID_ARGUMENT

    # Removing one tag of two keeps the image; removing by id removes it.
    await cli.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="busybox:1.36")))
    st = await cli.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    assert st.image.repo_tags == ["docker.io/library/busybox:latest"]
    await cli.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    await cli.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    st = await cli.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    assert not st.HasField("image")
    fs = await cli.images.ImageFsInfo(pb.ImageFsInfoRequest())
    assert fs.image_filesystems[0].used_bytes.value == pause.size

    streamed: list[str] = []
    async with cli.images.StreamImages.open() as stream:
        await stream.send_message(pb.StreamImagesRequest(), end=True)
        async for msg in stream:
            streamed += [i.id for i in msg.images]
    assert streamed == [pause.id]


async def test_update_runtime_config_persists(srv: CRIServer) -> None:
    await srv.client.runtime.UpdateRuntimeConfig(
        pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.1.0.0/16"))
        )
    )
    await srv.restart()
    st = await srv.client.runtime.Status(pb.StatusRequest(verbose=True))
    assert st.info["podCIDR"] == "10.1.0.0/16"


async def test_container_events_stream(cli: CRIClient, srv: CRIServer) -> None:
    events: list[pb.ContainerEventResponse] = []
    ready = asyncio.Event()

    async def collect() -> None:
        async with cli.runtime.GetContainerEvents.open() as stream:
            await stream.send_message(pb.GetEventsRequest(), end=True)
            ready.set()
            async for ev in stream:
                events.append(ev)

    # Two subscribers see the same events.
    task = asyncio.create_task(collect())
    other: list[int] = []

    async def collect_types() -> None:
        async with cli.runtime.GetContainerEvents.open() as stream:
            await stream.send_message(pb.GetEventsRequest(), end=True)
            async for ev in stream:
                other.append(ev.container_event_type)

    task2 = asyncio.create_task(collect_types())
    await ready.wait()
    assert srv.server is not None
    bus = srv.server.runtime.events
    await until(lambda: bus.subscribers == 2, what="both subscriptions on the server")
    pod, pcfg = await new_pod(cli)
    cid = await cli.create_container(
        pod, container_config("c", "busybox", command=["sh", "-c", "sleep 0.1; exit 2"]), pcfg
    )
    await cli.start_container(cid)
    await wait_state(cli, cid, pb.CONTAINER_EXITED)
    await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    await until(lambda: len(events) >= 8 and len(other) >= 8, what="8 events on both streams")
    task.cancel()
    task2.cancel()

    seq = [(e.container_id, e.container_event_type) for e in events]
    assert seq == [
        (pod, pb.CONTAINER_CREATED_EVENT),
        (pod, pb.CONTAINER_STARTED_EVENT),
        (cid, pb.CONTAINER_CREATED_EVENT),
        (cid, pb.CONTAINER_STARTED_EVENT),
        (cid, pb.CONTAINER_STOPPED_EVENT),
        (cid, pb.CONTAINER_DELETED_EVENT),
        (pod, pb.CONTAINER_STOPPED_EVENT),
        (pod, pb.CONTAINER_DELETED_EVENT),
    ]
    assert other == [t for _, t in seq]
    stopped = events[4]
    assert stopped.pod_sandbox_status.id == pod
    assert stopped.pod_sandbox_status.state == pb.SANDBOX_READY
    [cs] = stopped.containers_statuses
    assert (cs.id, cs.state, cs.exit_code) == (cid, pb.CONTAINER_EXITED, 2)
    assert all(e.created_at > 0 for e in events)
    assert events[-1].pod_sandbox_status.state == pb.SANDBOX_NOTREADY


async def test_stats_on_the_fake_backend_carry_attributes_only(cli: CRIClient) -> None:
    """Simulated containers have no cgroup: stats answer with attributes and no usage,
    never invented numbers."""
    pod, pcfg = await new_pod(cli)
    cid = await cli.create_container(pod, container_config("c", "busybox"), pcfg)
    await cli.start_container(cid)
    st = (await cli.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid))).stats
    assert st.attributes.id == cid and not st.HasField("cpu") and not st.HasField("memory")
    listed = await cli.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest())
    assert [s.attributes.id for s in listed.stats] == [pod]
    assert [c.attributes.id for c in listed.stats[0].linux.containers] == [cid]
    metrics = await cli.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
    assert list(metrics.pod_metrics) == []
    with pytest.raises(GRPCError) as err:
        await cli.runtime.ContainerStats(pb.ContainerStatsRequest(container_id="0" * 64))
    assert err.value.status is Status.NOT_FOUND
