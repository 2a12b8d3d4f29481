"""Prometheus metrics: the ``Recorder`` interface everything reports to, and its
Prometheus implementation.

``NO_METRICS`` (the default) does nothing and imports nothing. ``PrometheusRecorder``, built
only when ``[metrics] address`` is set, imports prometheus_client and serves ``GET /metrics``
from the event loop (``cri_async.metrics_http``), so collection reads the core's tables on
the loop that changes them: pods and containers by state, event subscribers, stats age are
computed at scrape time from the objects themselves, with no bookkeeping on hot paths.

Series (all prefixed ``cri_async_``):
- ``grpc_requests_total{service,method,code}``, ``grpc_request_duration_seconds{service,method}``
- ``pod_sandboxes{handler,state}``, ``containers{handler,state}`` (``handler=""``: default)
- ``image_pulls_total{result}``, ``image_pull_bytes_total``, ``image_pull_duration_seconds``
- ``invocations_total{component,backend,verb,result}``,
  ``invocation_duration_seconds{component,backend,verb}`` (OCI runtime, conmon, CNI)
- ``event_subscribers``, ``event_subscriber_queue_depth_max``, ``event_queue_capacity``,
  ``event_subscribers_dropped_total``
- ``stats_oldest_sample_age_seconds{kind}`` (kind: container | pod)
- ``build_info{version,cri_api_version}``; and prometheus_client's ``process_*``,
  ``python_gc_*``, ``python_info``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cri_async import CRI_API_VERSION, __version__
from cri_async.config import split_address
from cri_async.core.errors import Unavailable

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from cri_async.core.events import EventBus
    from cri_async.core.model import Container, Sandbox
    from cri_async.core.ports import StatsSource
    from cri_async.metrics_http import MetricsEndpoint

# Seconds. RPCs: from a cached List to a slow image pull or runsc delete (rpc_timeout 240).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 240)
PULL_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
INVOCATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Recorder(Protocol):
    """What the server, the image store and (phase 2) the subprocess helper report."""

    def rpc(self, service: str, method: str, code: str, seconds: float) -> None: ...

    def image_pull(self, *, ok: bool, seconds: float, size: int) -> None:
        """One pull finished; ``size``: bytes downloaded (layers already stored: 0)."""
        ...

    def record_invocation(
        self, component: str, backend: str, verb: str, seconds: float, ok: bool
    ) -> None:
        """One run of an external program: component "oci" | "conmon" | "cni", backend
        the runtime or plugin ("runc", "bridge"), verb its command ("create", "ADD")."""
        ...

    def watch_state(self, sources: StateSources) -> None:
        """Read these at every scrape (pods, containers, event bus, stats cache)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class StateSources:
    handlers: tuple[str, ...]
    sandboxes: Callable[[], Iterable[Sandbox]]
    containers: Callable[[], Iterable[Container]]
    events: EventBus
    stats: StatsSource | None = None


class _Null:
    def rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        pass

    def image_pull(self, *, ok: bool, seconds: float, size: int) -> None:
        pass

    def record_invocation(
        self, component: str, backend: str, verb: str, seconds: float, ok: bool
    ) -> None:
        pass

    def watch_state(self, sources: StateSources) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


NO_METRICS: Recorder = _Null()

SANDBOX_STATES = ("ready", "notready")
CONTAINER_STATES = ("created", "running", "exited", "unknown")


@dataclass(frozen=True, slots=True)
class StateCounts:
    """Pods and containers by (handler, state), every state of every handler present."""

    sandboxes: dict[tuple[str, str], int]
    containers: dict[tuple[str, str], int]


def count_state(
    handlers: Iterable[str], sandboxes: Iterable[Sandbox], containers: Iterable[Container]
) -> StateCounts:
    """Pure: a container counts under its pod's handler (its pod unknown: ``""``)."""
    hs = set(handlers)
    handler_of: dict[str, str] = {}
    pods: dict[tuple[str, str], int] = {}
    for s in sandboxes:
        handler_of[s.id] = s.runtime_handler
        hs.add(s.runtime_handler)
        key = (s.runtime_handler, s.state.value)
        pods[key] = pods.get(key, 0) + 1
    ctrs: dict[tuple[str, str], int] = {}
    for c in containers:
        h = handler_of.get(c.sandbox_id, "")
        hs.add(h)
        key = (h, c.state.value)
        ctrs[key] = ctrs.get(key, 0) + 1
    return StateCounts(
        sandboxes={(h, st): pods.get((h, st), 0) for h in sorted(hs) for st in SANDBOX_STATES},
        containers={(h, st): ctrs.get((h, st), 0) for h in sorted(hs) for st in CONTAINER_STATES},
    )


def oldest_age(timestamps_ns: Iterable[int], now_ns: int) -> float | None:
    """Seconds since the oldest sample (None: no samples)."""
    oldest = min(timestamps_ns, default=None)
    return None if oldest is None else max(now_ns - oldest, 0) / 1e9


class _StateCollector:
    """Computes the state gauges from the live objects at each scrape."""

    def __init__(self, sources: StateSources) -> None:
        self.s = sources

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.s
        counts = count_state(s.handlers, s.sandboxes(), s.containers())
        pods = GaugeMetricFamily(
            "cri_async_pod_sandboxes",
            "Pod sandboxes by handler and state",
            labels=["handler", "state"],
        )
        for (h, st), n in counts.sandboxes.items():
            pods.add_metric([h, st], n)
        ctrs = GaugeMetricFamily(
            "cri_async_containers", "Containers by handler and state", labels=["handler", "state"]
        )
        for (h, st), n in counts.containers.items():
            ctrs.add_metric([h, st], n)
        yield pods
        yield ctrs
        depths = s.events.queue_depths()
        yield GaugeMetricFamily(
            "cri_async_event_subscribers", "GetContainerEvents subscribers", value=len(depths)
        )
        yield GaugeMetricFamily(
            "cri_async_event_subscriber_queue_depth_max",
            "Events queued for the slowest GetContainerEvents subscriber",
            value=max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "cri_async_event_queue_capacity",
            "Events a subscriber may fall behind before it is dropped",
            value=s.events.queue_size,
        )
        yield CounterMetricFamily(
            "cri_async_event_subscribers_dropped",
            "GetContainerEvents subscribers dropped for falling behind",
            value=s.events.dropped_total,
        )
        if s.stats is not None:
            age = GaugeMetricFamily(
                "cri_async_stats_oldest_sample_age_seconds",
                "Age of the oldest cached stats sample",
                labels=["kind"],
            )
            now = time.time_ns()
            for kind, samples in (
                ("container", s.stats.containers()),
                ("pod", s.stats.pods()),
            ):
                a = oldest_age((x.timestamp for x in samples), now)
                if a is not None:
                    age.add_metric([kind], a)
            yield age


class PrometheusRecorder:
    """The Prometheus implementation; one private registry per server."""

    def __init__(self, address: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        self.host, self.port = split_address(address, "metrics.address")
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        self._rpcs = Counter(
            "cri_async_grpc_requests",
            "CRI RPCs by outcome (gRPC status code)",
            ["service", "method", "code"],
            registry=r,
        )
        self._rpc_seconds = Histogram(
            "cri_async_grpc_request_duration_seconds",
            "CRI RPC latency",
            ["service", "method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self._pulls = Counter(
            "cri_async_image_pulls", "Image pulls by result", ["result"], registry=r
        )
        self._pull_bytes = Counter(
            "cri_async_image_pull_bytes", "Bytes downloaded by image pulls", registry=r
        )
        self._pull_seconds = Histogram(
            "cri_async_image_pull_duration_seconds",
            "Image pull duration (successful and failed)",
            buckets=PULL_BUCKETS,
            registry=r,
        )
        self._inv = Counter(
            "cri_async_invocations",
            "Runs of OCI runtimes, conmon and CNI plugins by result",
            ["component", "backend", "verb", "result"],
            registry=r,
        )
        self._inv_seconds = Histogram(
            "cri_async_invocation_duration_seconds",
            "Duration of OCI runtime, conmon and CNI plugin runs",
            ["component", "backend", "verb"],
            buckets=INVOCATION_BUCKETS,
            registry=r,
        )
        Gauge(
            "cri_async_build_info",
            "cri-async version",
            ["version", "cri_api_version"],
            registry=r,
        ).labels(__version__, CRI_API_VERSION).set(1)
        self._endpoint: MetricsEndpoint | None = None

    def rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        self._rpcs.labels(service, method, code).inc()
        self._rpc_seconds.labels(service, method).observe(seconds)

    def image_pull(self, *, ok: bool, seconds: float, size: int) -> None:
        self._pulls.labels("ok" if ok else "error").inc()
        self._pull_bytes.inc(size)
        self._pull_seconds.observe(seconds)

    def record_invocation(
        self, component: str, backend: str, verb: str, seconds: float, ok: bool
    ) -> None:
        self._inv.labels(component, backend, verb, "ok" if ok else "error").inc()
        self._inv_seconds.labels(component, backend, verb).observe(seconds)

    def watch_state(self, sources: StateSources) -> None:
        collector: Collector = _StateCollector(sources)  # type: ignore[assignment]
        self.registry.register(collector)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition the ``Accept`` header asks for (OpenMetrics or text 0.0.4)."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    @property
    def bound(self) -> tuple[str, int] | None:
        """(host, port) the endpoint listens on once started (port 0 picks one)."""
        return None if self._endpoint is None else self._endpoint.address

    async def start(self) -> None:
        from cri_async.metrics_http import MetricsEndpoint

        endpoint = MetricsEndpoint(self.render, self.host, self.port)
        try:
            await endpoint.start()
        except OSError as e:
            raise Unavailable(
                f"metrics.address: cannot listen on {self.host}:{self.port}: {e.strerror or e}"
            ) from None
        self._endpoint = endpoint

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
            self._endpoint = None
