"""What metrics and tracing cost: per-RPC latency off vs on, and the scrape of /metrics.

Three embedded servers (fake backend) run side by side: observability off, metrics on,
metrics and tracing on (spans exported to a local OTLP/HTTP sink). Rounds of ``--calls``
sequential ``Version`` calls go to each in turn (interleaved, so machine noise hits all
three alike); the report is the median per-call latency of each. Then ``--pods`` pods with
two containers each are created on the metrics server and ``GET /metrics`` is timed.

    .venv/bin/python bench/observe.py [--calls 500] [--rounds 10] [--pods 200]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.server
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_async.client import container_config, pod_config
from cri_async.config import (
    Config,
    HandlerConfig,
    ImagesConfig,
    MetricsConfig,
    TracingConfig,
)
from cri_async.metrics import PrometheusRecorder
from cri_async.testing import CRIServer


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def config(**kw: object) -> Config:
    return dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="fake")},
        images=ImagesConfig(backend="fake"),
        **kw,  # type: ignore[arg-type]
    )


async def round_us(srv: CRIServer, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        await srv.client.version()
    return (time.perf_counter() - t0) / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    variants = {
        "off": config(),
        "metrics": config(metrics=MetricsConfig("127.0.0.1:0")),
        "metrics+tracing": config(
            metrics=MetricsConfig("127.0.0.1:0"), tracing=TracingConfig(endpoint=otlp)
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        servers = {n: CRIServer(Path(tmp) / n, config=c) for n, c in variants.items()}
        for s in servers.values():
            await s.start()
        try:
            results: dict[str, list[float]] = {n: [] for n in servers}
            for s in servers.values():
                await round_us(s, 100)  # warm-up
            for _ in range(args.rounds):
                for n, s in servers.items():
                    results[n].append(await round_us(s, args.calls))
            print(f"Version round trip, median of {args.rounds} rounds of {args.calls} calls:")
            base = statistics.median(results["off"])
            for n, r in results.items():
                med = statistics.median(r)
                print(f"  {n:<16} {med:8.1f} us/call  ({med - base:+.1f} us vs off)")

            srv = servers["metrics"]
            await srv.client.pull("busybox")
            for i in range(args.pods):
                cfg = pod_config(f"p{i}")
                pod = await srv.client.run_pod(cfg)
                for c in ("a", "b"):
                    cid = await srv.client.create_container(
                        pod, container_config(c, "busybox", command=["sleep", "1d"]), cfg
                    )
                    await srv.client.start_container(cid)
            assert srv.server is not None
            rec = srv.server.observer.metrics
            assert isinstance(rec, PrometheusRecorder)
            assert rec.bound is not None
            url = "http://{}:{}/metrics".format(*rec.bound)
            times = []
            async with httpx.AsyncClient() as http_client:
                for _ in range(50):
                    t0 = time.perf_counter()
                    r = await http_client.get(url)
                    times.append((time.perf_counter() - t0) * 1e3)
            print(
                f"GET /metrics with {args.pods} pods, {2 * args.pods} containers: "
                f"median {statistics.median(times):.2f} ms, "
                f"max {max(times):.2f} ms, {len(r.content)} bytes"
            )
        finally:
            for s in servers.values():
                await s.stop()
            sink.shutdown()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pods", type=int, default=200)
    asyncio.run(main(p.parse_args()))
