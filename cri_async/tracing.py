"""OpenTelemetry tracing: one server span per RPC, a child of the caller's trace.

kubelet (with its ``KubeletTracing`` feature) sends the W3C ``traceparent``/``tracestate``
as gRPC metadata; the RPC's span continues that trace, and is the current span while the
handler runs, so child spans (``child_span``: runtime, conmon, CNI and registry calls)
nest under it. ``NO_TRACER`` is the default: no OpenTelemetry import, a shared no-op span.
``OTelTracer`` (only built when ``[tracing] endpoint`` is set) exports over OTLP/HTTP with
protobuf in a background batch thread and never sets the process-global provider, so
several servers in one process (tests, embedding) keep their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import Token
from typing import TYPE_CHECKING, Protocol

from grpclib.const import Status

from cri_async import __version__
from cri_async.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.context.context import Context
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as OTelSpan

# The metadata keys of W3C trace context (gRPC metadata keys are lower-case).
TRACE_KEYS = ("traceparent", "tracestate")


class Span(Protocol):
    def finish(self, code: str) -> None:
        """End the span with the RPC's gRPC status name ("OK", "NOT_FOUND", ...)."""
        ...


class Tracer(Protocol):
    def rpc_span(self, service: str, method: str, metadata: Mapping[str, object] | None) -> Span:
        """Start the RPC's span and make it current until ``finish``."""
        ...

    def child_span(self, name: str, attributes: Mapping[str, str]) -> AbstractContextManager[None]:
        """A span under the current one, for the duration of the ``with`` block."""
        ...

    async def close(self) -> None: ...


class _NullSpan:
    def finish(self, code: str) -> None:
        pass


class _NullTracer:
    _span = _NullSpan()

    def rpc_span(self, service: str, method: str, metadata: Mapping[str, object] | None) -> Span:
        return self._span

    def child_span(self, name: str, attributes: Mapping[str, str]) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def close(self) -> None:
        pass


NO_TRACER: Tracer = _NullTracer()


def trace_carrier(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """The W3C trace context entries of gRPC metadata (text values only)."""
    if not metadata:
        return {}
    out: dict[str, str] = {}
    for key in TRACE_KEYS:
        value = metadata.get(key)
        if isinstance(value, str):
            out[key] = value
    return out


class _RPCSpan:
    __slots__ = ("_span", "_token")

    def __init__(self, span: OTelSpan, token: Token[Context]) -> None:
        self._span = span
        self._token = token

    def finish(self, code: str) -> None:
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        try:
            status = Status[code]
        except KeyError:
            status = Status.UNKNOWN
        self._span.set_attribute("rpc.grpc.status_code", status.value)
        if status is not Status.OK:
            self._span.set_status(StatusCode.ERROR, code)
        self._span.end()
        context.detach(self._token)


class OTelTracer:
    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=config.endpoint))
        )
        self._tracer = self._provider.get_tracer("cri_async", __version__)
        self._propagator = TraceContextTextMapPropagator()

    def rpc_span(self, service: str, method: str, metadata: Mapping[str, object] | None) -> Span:
        from opentelemetry import context, trace

        parent = self._propagator.extract(trace_carrier(metadata))
        span = self._tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        return _RPCSpan(span, token)

    @contextlib.contextmanager
    def _child(self, name: str, attributes: Mapping[str, str]) -> Iterator[None]:
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)):
            yield

    def child_span(self, name: str, attributes: Mapping[str, str]) -> AbstractContextManager[None]:
        return self._child(name, attributes)

    async def close(self) -> None:
        """Flush what is batched (the exporter's own timeout bounds it) and stop."""
        await asyncio.to_thread(self._provider.shutdown)
