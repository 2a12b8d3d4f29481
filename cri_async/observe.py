"""What the per-RPC wrapper and the subprocess helpers report to: metrics and tracing.

``Observer()`` (both off) is the default and costs a few attribute look-ups per RPC:
neither prometheus_client nor OpenTelemetry is imported unless the config turns them on
(``build``). The rest of the code depends only on the interfaces here and in
``cri_async.metrics`` / ``cri_async.tracing``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cri_async.config import Config
from cri_async.metrics import NO_METRICS, Recorder
from cri_async.tracing import NO_TRACER, Span, Tracer


class RPCCall:
    """One RPC in flight: ``finish(code)`` records its duration, outcome and span."""

    __slots__ = ("_method", "_metrics", "_service", "_span", "_start")

    def __init__(self, metrics: Recorder, service: str, method: str, span: Span) -> None:
        self._metrics = metrics
        self._service = service
        self._method = method
        self._span = span
        self._start = time.perf_counter()

    def finish(self, code: str) -> float:
        """``code`` is the gRPC status name ("OK", "NOT_FOUND"...); returns the seconds."""
        seconds = time.perf_counter() - self._start
        self._metrics.rpc(self._service, self._method, code, seconds)
        self._span.finish(code)
        return seconds


@dataclass(frozen=True)
class Observer:
    metrics: Recorder = NO_METRICS
    tracer: Tracer = NO_TRACER

    def rpc(self, service: str, method: str, metadata: Mapping[str, object] | None) -> RPCCall:
        """Start observing one RPC; ``metadata`` carries the client's ``traceparent``."""
        return RPCCall(
            self.metrics, service, method, self.tracer.rpc_span(service, method, metadata)
        )

    @contextlib.contextmanager
    def invocation(self, component: str, backend: str, verb: str) -> Iterator[None]:
        """Around one OCI runtime / conmon / CNI plugin invocation (the subprocess helper):
        a latency/outcome sample and a child span of the RPC that caused it."""
        start = time.perf_counter()
        ok = False
        with self.tracer.child_span(f"{component} {verb}", {"backend": backend}):
            try:
                yield
                ok = True
            finally:
                self.metrics.record_invocation(
                    component, backend, verb, time.perf_counter() - start, ok
                )

    async def start(self) -> None:
        await self.metrics.start()

    async def close(self) -> None:
        await self.metrics.close()
        await self.tracer.close()


NO_OBSERVER = Observer()
"""Metrics and tracing off: what adapters observe with unless the server gives them its own."""


def build(config: Config) -> Observer:
    """The observer a config asks for; imports a library only for what is turned on."""
    metrics: Recorder = NO_METRICS
    tracer: Tracer = NO_TRACER
    if config.metrics.address:
        from cri_async.metrics import PrometheusRecorder

        metrics = PrometheusRecorder(config.metrics.address)
    if config.tracing.endpoint:
        from cri_async.tracing import OTelTracer

        tracer = OTelTracer(config.tracing)
    return Observer(metrics, tracer)
