"""Streaming server: exec round trips and port-forward throughput, beside their floors.

Everything runs on loopback against ``StreamingServer`` with the host-process backend of
the tests (``tests/support/hoststreams.py``), so the numbers are the server and client
themselves plus a fork/exec or a TCP dial, not a container runtime.

- exec: ``printf hello`` end to end (connect, streams, output, status, teardown), N times
  one after the other, per transport; floor: the same process run by asyncio directly.
- port-forward: 256 MiB from a local TCP source through one forwarded connection (SPDY
  with windows, SPDY as Go's client, WebSocket v4), and 256 MiB up through SPDY to a sink;
  floor: the same bytes over a direct TCP connection.

    .venv/bin/python bench/streaming.py [--runs 50] [--mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cri_async.streaming import client  # noqa: E402
from cri_async.streaming.backend import Stdio  # noqa: E402
from cri_async.streaming.client import Transport  # noqa: E402
from cri_async.streaming.server import StreamingServer  # noqa: E402
from cri_async.streaming.service import ExecTarget, PortForwardTarget  # noqa: E402
from tests.support.hoststreams import HostStreamBackend  # noqa: E402

MIB = 1 << 20
CHUNK = b"\x5a" * MIB


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1e3 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms"


async def timed(n: int, fn: Callable[[], Awaitable[object]]) -> list[float]:
    await fn()  # warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def bench_exec(srv: StreamingServer, runs: int) -> None:
    target = ExecTarget("ctr", ("printf", "hello"), Stdio(stdout=True, stderr=True))

    async def floor() -> None:
        p = await asyncio.create_subprocess_exec("printf", "hello", stdout=-1, stderr=-1)
        await p.communicate()

    print(f"exec printf hello, {runs} runs")
    print(f"  {'floor (asyncio subprocess)':28} {percentiles(await timed(runs, floor))}")
    for name, transport, protocols in [
        ("spdy v4", Transport.SPDY, None),
        ("websocket v5", Transport.WEBSOCKET, ["v5.channel.k8s.io"]),
        ("websocket v4", Transport.WEBSOCKET, ["v4.channel.k8s.io"]),
    ]:

        async def one(t: Transport = transport, p: list[str] | None = protocols) -> None:
            res = await client.run(srv.issue(target), transport=t, protocols=p)
            assert res.stdout == b"hello"

        print(f"  {name:28} {percentiles(await timed(runs, one))}")


async def bench_forward(srv: StreamingServer, mib: int) -> None:
    async def source(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(mib):
            w.write(CHUNK)
            await w.drain()
        w.close()

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = 0
        while data := await r.read(MIB):
            n += len(data)
        w.write(str(n).encode())
        await w.drain()
        w.close()

    src = await asyncio.start_server(source, "127.0.0.1", 0)
    snk = await asyncio.start_server(sink, "127.0.0.1", 0)
    sport = src.sockets[0].getsockname()[1]
    kport = snk.sockets[0].getsockname()[1]
    print(f"port-forward, {mib} MiB through one connection")

    def rate(seconds: float) -> str:
        return f"{mib / seconds:8.1f} MiB/s  ({seconds:6.2f} s)"

    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", sport)
    got = 0
    while data := await r.read(MIB):
        got += len(data)
    w.close()
    assert got == mib * MIB
    print(f"  {'floor (direct TCP) down':28} {rate(time.perf_counter() - t0)}")
    for name, transport, flow in [
        ("spdy down (windows)", Transport.SPDY, True),
        ("spdy down (as Go)", Transport.SPDY, False),
        ("websocket v4 down", Transport.WEBSOCKET, True),
    ]:
        t0 = time.perf_counter()
        url = srv.issue(PortForwardTarget("pod", (sport,)))
        async with await client.open_port_forward(
            url, transport=transport, ports=[sport], flow_control=flow
        ) as pf:
            stream = await pf.connect(sport)
            got = 0
            while data := await stream.read():
                got += len(data)
        assert got == mib * MIB
        print(f"  {name:28} {rate(time.perf_counter() - t0)}")
    t0 = time.perf_counter()
    async with await client.open_port_forward(srv.issue(PortForwardTarget("pod", ()))) as pf:
        stream = await pf.connect(kport)
        for _ in range(mib):
            await stream.write(CHUNK)
        await stream.close_write()
        answer = b""
        while data := await stream.read():
            answer += data
    assert int(answer) == mib * MIB
    print(f"  {'spdy up (windows)':28} {rate(time.perf_counter() - t0)}")
    for s in (src, snk):
        s.close()
        await s.wait_closed()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    backend = HostStreamBackend()
    await backend.add_container("ctr", ["sleep", "infinity"])
    try:
        async with StreamingServer(backend) as srv:
            await bench_exec(srv, args.runs)
            await bench_forward(srv, args.mib)
    finally:
        await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
