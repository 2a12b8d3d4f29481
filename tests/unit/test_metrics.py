"""The metrics recorder, its scrape-time state collector and the observer, without a server."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_async.core.events import ContainerEvent, EventBus, EventType
from cri_async.core.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    ImageSpec,
    PodMetadata,
    Sandbox,
    SandboxConfig,
    SandboxState,
)
from cri_async.metrics import (
    NO_METRICS,
    PrometheusRecorder,
    StateSources,
    count_state,
    oldest_age,
)
from cri_async.observe import Observer
from cri_async.stats.cache import StatsCache
from cri_async.stats.cgroupstats import CgroupStats


def samples(rec: PrometheusRecorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = rec.render("")
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sandbox(sid: str, handler: str = "", state: SandboxState = SandboxState.READY) -> Sandbox:
    return Sandbox(
        id=sid,
        config=SandboxConfig(PodMetadata(sid, "default", sid)),
        runtime_handler=handler,
        created_at=1,
        state=state,
    )


def container(cid: str, sid: str, state: ContainerState) -> Container:
    return Container(
        id=cid,
        sandbox_id=sid,
        config=ContainerConfig(ContainerMetadata(cid), ImageSpec("busybox")),
        image_id="sha256:x",
        image_ref="busybox",
        created_at=1,
        state=state,
    )


def test_count_state_has_every_state_of_every_handler() -> None:
    pods = [sandbox("a"), sandbox("b", "runsc"), sandbox("c", "runsc", SandboxState.NOTREADY)]
    ctrs = [
        container("1", "a", ContainerState.RUNNING),
        container("2", "b", ContainerState.EXITED),
        container("3", "gone", ContainerState.CREATED),
    ]
    c = count_state(("", "crun"), pods, ctrs)
    assert c.sandboxes[("", "ready")] == 1
    assert c.sandboxes[("runsc", "notready")] == 1 and c.sandboxes[("runsc", "ready")] == 1
    assert c.sandboxes[("crun", "ready")] == 0  # a configured handler without pods: zeros
    assert c.containers[("", "running")] == 1
    assert c.containers[("", "created")] == 1  # its pod is unknown: the default handler
    assert c.containers[("runsc", "exited")] == 1
    assert c.containers[("crun", "unknown")] == 0
    assert len(c.containers) == 3 * 4


def test_oldest_age() -> None:
    assert oldest_age([], 10) is None
    assert oldest_age([3_000_000_000, 9_000_000_000], 10_000_000_000) == 7.0
    assert oldest_age([20], 10) == 0.0  # a clock step never gives a negative age


async def test_state_gauges_read_the_live_objects_at_each_scrape() -> None:
    pods: list[Sandbox] = [sandbox("a")]
    ctrs: list[Container] = []
    bus = EventBus(queue_size=1)
    rec = PrometheusRecorder("127.0.0.1:0")
    rec.watch_state(StateSources(("",), lambda: pods, lambda: ctrs, bus))
    s = samples(rec)
    assert s[("cri_async_pod_sandboxes", (("handler", ""), ("state", "ready")))] == 1
    assert s[("cri_async_containers", (("handler", ""), ("state", "running")))] == 0
    assert s[("cri_async_event_subscribers", ())] == 0
    assert s[("cri_async_event_queue_capacity", ())] == 1

    ctrs.append(container("1", "a", ContainerState.RUNNING))
    slow = bus.subscribe()
    bus.publish(ContainerEvent("1", EventType.STARTED, 1, None, ()))
    s = samples(rec)
    assert s[("cri_async_containers", (("handler", ""), ("state", "running")))] == 1
    assert s[("cri_async_event_subscribers", ())] == 1
    assert s[("cri_async_event_subscriber_queue_depth_max", ())] == 1
    assert s[("cri_async_event_subscribers_dropped_total", ())] == 0

    bus.publish(ContainerEvent("1", EventType.STOPPED, 2, None, ()))  # queue full: dropped
    s = samples(rec)
    assert slow.dropped
    assert s[("cri_async_event_subscribers_dropped_total", ())] == 1
    assert s[("cri_async_event_subscribers", ())] == 0


async def test_stats_age_of_the_oldest_sample() -> None:
    now = [1_700_000_000 * 10**9]

    class Reader:
        def read(self, path: str) -> CgroupStats | None:
            return CgroupStats(version=2, cpu_usage_ns=5)

    cache = StatsCache(Reader(), time_ns=lambda: now[0])
    cache.track("c1", "/kubepods/c1", "p1")
    rec = PrometheusRecorder("127.0.0.1:0")
    rec.watch_state(StateSources(("",), list, list, EventBus(), cache))
    assert not any(k[0] == "cri_async_stats_oldest_sample_age_seconds" for k in samples(rec))
    await cache.refresh_now()
    age = samples(rec)[("cri_async_stats_oldest_sample_age_seconds", (("kind", "container"),))]
    # The sample's timestamp is the injected 2023 clock, so it is years old by now.
    assert age > 365 * 86400


def test_rpcs_pulls_and_invocations_are_counted() -> None:
    rec = PrometheusRecorder("127.0.0.1:0")
    obs = Observer(rec)
    obs.rpc("RuntimeService", "Version", None).finish("OK")
    obs.rpc("RuntimeService", "Version", None).finish("OK")
    obs.rpc("RuntimeService", "ContainerStatus", None).finish("NOT_FOUND")
    rec.image_pull(ok=True, seconds=1.5, size=1000)
    rec.image_pull(ok=False, seconds=0.2, size=0)
    with obs.invocation("oci", "runc", "create"):
        pass
    with pytest.raises(RuntimeError), obs.invocation("cni", "bridge", "ADD"):
        raise RuntimeError("plugin failed")
    s = samples(rec)
    rpc = (("code", "OK"), ("method", "Version"), ("service", "RuntimeService"))
    assert s[("cri_async_grpc_requests_total", rpc)] == 2
    nf = (("code", "NOT_FOUND"), ("method", "ContainerStatus"), ("service", "RuntimeService"))
    assert s[("cri_async_grpc_requests_total", nf)] == 1
    hist = (("method", "Version"), ("service", "RuntimeService"))
    assert s[("cri_async_grpc_request_duration_seconds_count", hist)] == 2
    assert s[("cri_async_image_pulls_total", (("result", "ok"),))] == 1
    assert s[("cri_async_image_pulls_total", (("result", "error"),))] == 1
    assert s[("cri_async_image_pull_bytes_total", ())] == 1000
    assert s[("cri_async_image_pull_duration_seconds_sum", ())] == pytest.approx(1.7)
    inv = (("backend", "runc"), ("component", "oci"), ("result", "ok"), ("verb", "create"))
    assert s[("cri_async_invocations_total", inv)] == 1
    bad = (("backend", "bridge"), ("component", "cni"), ("result", "error"), ("verb", "ADD"))
    assert s[("cri_async_invocations_total", bad)] == 1
    assert any(k[0] == "process_resident_memory_bytes" for k in s)
    assert any(k[0] == "cri_async_build_info" for k in s)


def test_openmetrics_when_asked() -> None:
    rec = PrometheusRecorder("127.0.0.1:0")
    body, ctype = rec.render("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_null_observer_records_nothing_and_still_times() -> None:
    call = Observer().rpc("RuntimeService", "Version", {"traceparent": "x"})
    assert call.finish("OK") >= 0
    with Observer(NO_METRICS).invocation("oci", "runc", "start"):
        pass


async def test_endpoint_port_in_use_names_the_key() -> None:
    from cri_async.core.errors import Unavailable

    first = PrometheusRecorder("127.0.0.1:0")
    await first.start()
    try:
        assert first.bound is not None
        second = PrometheusRecorder(f"127.0.0.1:{first.bound[1]}")
        with pytest.raises(Unavailable, match=r"metrics\.address: cannot listen"):
            await second.start()
    finally:
        await first.close()
