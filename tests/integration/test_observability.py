"""Metrics and tracing on a real server: scrape /metrics over HTTP after CRI calls, receive
OTLP spans in a collector, and nothing imported when both are off."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from grpclib import GRPCError, Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.config import (
    Config,
    HandlerConfig,
    ImagesConfig,
    MetricsConfig,
    StateConfig,
    TracingConfig,
)
from cri_async.metrics import PrometheusRecorder
from cri_async.testing import CRIServer
from tests.support import images as im
from tests.support.registry import LocalRegistry

from .conftest import require

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fake_config(**kw: object) -> Config:
    return dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="fake")},
        images=ImagesConfig(backend="fake"),
        **kw,  # type: ignore[arg-type]
    )


async def scrape(srv: CRIServer) -> Samples:
    assert srv.server is not None
    rec = srv.server.observer.metrics
    assert isinstance(rec, PrometheusRecorder) and rec.bound is not None
    host, port = rec.bound
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{host}:{port}/metrics")
    assert r.status_code == 200
    out: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def count(s: Samples, method: str, code: str = "OK", service: str = "RuntimeService") -> float:
    key = (("code", code), ("method", method), ("service", service))
    return s.get(("cri_async_grpc_requests_total", key), 0.0)


def state(s: Samples, kind: str, st: str, handler: str = "") -> float:
    return s[(f"cri_async_{kind}", (("handler", handler), ("state", st)))]


async def test_metrics_endpoint_shows_the_calls(tmp_path: Path) -> None:
    cfg = fake_config(metrics=MetricsConfig(address="127.0.0.1:0"))
    async with CRIServer(tmp_path, config=cfg) as srv:
        cli = srv.client
        before = await scrape(srv)
        assert count(before, "Version") == 0
        assert state(before, "pod_sandboxes", "ready") == 0
        assert before[("process_open_fds", ())] > 0

        await cli.version()
        await cli.version()
        await cli.pull("busybox")
        pcfg = pod_config("web")
        pod = await cli.run_pod(pcfg)
        cid = await cli.create_container(
            pod, container_config("c", "busybox", command=["sleep", "infinity"]), pcfg
        )
        await cli.start_container(cid)
        with pytest.raises(GRPCError) as err:
            await cli.container_status("0" * 64)
        assert err.value.status is Status.NOT_FOUND
        events = cli.runtime.GetContainerEvents.open()
        async with events as stream:
            await stream.send_message(pb.GetEventsRequest(), end=True)
            for _ in range(1000):  # until the server has subscribed it
                mid = await scrape(srv)
                if mid[("cri_async_event_subscribers", ())] == 1:
                    break
                await asyncio.sleep(0.01)
            assert mid[("cri_async_event_subscribers", ())] == 1
            await stream.cancel()

        assert count(mid, "Version") == 2
        assert count(mid, "PullImage", service="ImageService") == 1
        assert count(mid, "ContainerStatus", "NOT_FOUND") == 1
        hist = (("method", "RunPodSandbox"), ("service", "RuntimeService"))
        assert mid[("cri_async_grpc_request_duration_seconds_count", hist)] == 1
        assert mid[("cri_async_grpc_request_duration_seconds_sum", hist)] > 0
        assert state(mid, "pod_sandboxes", "ready") == 1
        assert state(mid, "containers", "running") == 1

        await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        after = await scrape(srv)
        assert state(after, "containers", "running") == 0
        assert state(after, "containers", "exited") == 1
        assert count(after, "StopContainer") == 1


@pytest.mark.registry
async def test_image_pull_metrics(tmp_path: Path, registry: LocalRegistry) -> None:
    image = im.busybox_image(cmd=("sh",))
    im.push(registry, "test/obs", image)
    cfg = dataclasses.replace(
        fake_config(metrics=MetricsConfig(address="127.0.0.1:0")),
        images=ImagesConfig(backend="registry", stall_timeout=5.0),
    )
    async with CRIServer(tmp_path, config=cfg) as srv:
        await srv.client.pull(registry.ref("test/obs"))
        with pytest.raises(GRPCError):
            await srv.client.pull(registry.ref("test/absent"))
        s = await scrape(srv)
    layer_bytes = sum(layer.size for layer in image.layers)
    assert s[("cri_async_image_pulls_total", (("result", "ok"),))] == 1
    assert s[("cri_async_image_pulls_total", (("result", "error"),))] == 1
    assert s[("cri_async_image_pull_bytes_total", ())] == layer_bytes
    assert s[("cri_async_image_pull_duration_seconds_count", ())] == 2


@pytest.mark.subprocess
def test_nothing_is_imported_when_metrics_and_tracing_are_off(tmp_path: Path) -> None:
    script = f"""
import asyncio, sys
from cri_async.testing import CRIServer

async def main():
    async with CRIServer({str(tmp_path)!r}) as srv:
        await srv.client.version()
        await srv.client.pull("busybox")
    loaded = sorted(m for m in sys.modules if m.startswith(("prometheus_client", "opentelemetry")))
    print(loaded)

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


class Collector:
    """A minimal OTLP/HTTP traces receiver (protobuf), as an OpenTelemetry collector is."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                received.append(req)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def spans(self) -> list[tuple[object, ...]]:
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                service = next(
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                )
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        attrs = {a.key: a.value for a in sp.attributes}
                        if "rpc.grpc.status_code" not in attrs:
                            continue  # a child span (see named())
                        out.append(
                            (
                                service,
                                sp.name,
                                sp.trace_id.hex(),
                                sp.parent_span_id.hex(),
                                attrs["rpc.grpc.status_code"].int_value,
                                sp.status.code,
                            )
                        )
        return out

    def named(self) -> dict[str, list[tuple[str, str, str]]]:
        """name -> (trace id, span id, parent span id) of every span received."""
        out: dict[str, list[tuple[str, str, str]]] = {}
        for req in self.requests:
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        out.setdefault(sp.name, []).append(
                            (sp.trace_id.hex(), sp.span_id.hex(), sp.parent_span_id.hex())
                        )
        return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    yield c
    c.httpd.shutdown()
    c.httpd.server_close()


async def test_one_span_per_rpc_continues_the_callers_trace(
    tmp_path: Path, collector: Collector
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    cfg = fake_config(tracing=TracingConfig(endpoint=collector.url, service_name="node-a"))
    async with CRIServer(tmp_path, config=cfg) as srv:
        md = {"traceparent": f"00-{trace_id}-{parent}-01"}
        await srv.client.runtime.Version(pb.VersionRequest(), metadata=md)
        with pytest.raises(GRPCError):
            await srv.client.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id="nope"), metadata=md
            )
        await srv.client.runtime.Status(pb.StatusRequest())  # no trace context: a new trace
    # Stopping the server flushed the batch to the collector.
    spans = collector.spans()
    assert ("node-a", "RuntimeService/Version", trace_id, parent, 0, 0) in spans
    # NOT_FOUND (5), span status ERROR (2).
    assert ("node-a", "RuntimeService/ContainerStatus", trace_id, parent, 5, 2) in spans
    (status,) = [s for s in spans if s[1] == "RuntimeService/Status"]
    assert status[2] != trace_id and status[3] == ""


@pytest.mark.root
@pytest.mark.registry
async def test_runtime_invocations_are_counted(
    tmp_path: Path, busybox_ref: str, request: pytest.FixtureRequest, collector: Collector
) -> None:
    """Every OCI runtime and conmon invocation of a real container's life is a metric
    sample and a child span of the RPC that caused it, labelled by component, runtime and
    verb; a pull is a child span of PullImage."""
    require("runc")
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="runc")},
        images=ImagesConfig(backend="registry"),
        metrics=MetricsConfig(address="127.0.0.1:0"),
        tracing=TracingConfig(endpoint=collector.url),
    )
    srv = CRIServer(tmp_path, config=cfg)
    # Short run root: conmon's attach socket path must fit in sun_path.
    run_root = Path(f"/run/crt{os.getpid() % 10000}o")
    srv.config = dataclasses.replace(
        srv.config,
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )
    request.addfinalizer(lambda: _drop_run_root(run_root))
    async with srv:
        cli = srv.client
        await cli.pull(busybox_ref)
        pcfg = pod_config("obs")
        pod = await cli.run_pod(pcfg)
        cid = await cli.create_container(
            pod, container_config("c", busybox_ref, command=["sleep", "1000"]), pcfg
        )
        await cli.start_container(cid)
        await cli.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10))
        await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        after = await scrape(srv)

    def calls(verb: str, component: str = "oci") -> float:
        labels = (("backend", "runc"), ("component", component), ("result", "ok"), ("verb", verb))
        return after.get(("cri_async_invocations_total", labels), 0.0)

    assert calls("start") == 1
    assert calls("kill") >= 1
    assert calls("delete") >= 1
    assert calls("create", "conmon") == 1
    assert calls("exec", "conmon") == 1
    spans = collector.named()
    ((_, start_rpc, _),) = spans["RuntimeService/StartContainer"]
    assert [p for _, _, p in spans["oci start"]] == [start_rpc]
    ((_, create_rpc, _),) = spans["RuntimeService/CreateContainer"]
    assert [p for _, _, p in spans["conmon create"]] == [create_rpc]
    ((_, pull_rpc, _),) = spans["ImageService/PullImage"]
    assert [p for _, _, p in spans["registry pull"]] == [pull_rpc]


def _drop_run_root(run_root: Path) -> None:
    linux.umount(str(run_root / "ns"))  # the pin directory's own private bind mount
    shutil.rmtree(run_root, ignore_errors=True)
