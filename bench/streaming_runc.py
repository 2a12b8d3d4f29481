"""Exec and port-forward on a real runc container, end to end, beside their floors.

What it measures. A busybox image (plus ``/src``: ``dd if=/dev/zero bs=1M``, a source that
is not the bottleneck) is pushed to a local CNCF registry, and a ``cri-async serve``
**process** is started on runc (so every figure includes the unix socket, gRPC, the
streaming server's socket and a real conmon). One pod runs ``sleep`` (the exec target) and
``nc -ll -p 9000 -e /src`` (each connection gets ``--mib`` MiB). Then, in one run:

* **exec round trip** of ``echo hi`` (``--runs``, 50, after 3 warm-ups), each from the
  Exec RPC to the exit status: SPDY, WebSocket v5; beside **ExecSync** of the same command
  (one RPC), and two floors without cri-async: the same process spec straight through
  ``runc exec`` with pipes (what a "direct" exec would cost), and through
  ``conmon --exec-attach`` driven by this script (``monitor.execattach``, what cri-async
  runs per session, without the RPC and streaming layers). Rounds interleave the kinds;
* **port-forward throughput**: ``--mib`` MiB from the pod's source through one forwarded
  connection over SPDY, WebSocket v4 and SPDY in WebSocket, beside the same bytes read by
  a direct socket into the pod's netns (``network.netns``), ``--repeat`` (3) times each,
  interleaved; MiB/s of the best and the median.

Run (as root; runc, conmon and docker-registry from Debian; ~40 s)::

    .venv/bin/python bench/streaming_runc.py [--runs 50] [--mib 256] [--repeat 3]

State lives in a temp dir and ``/run/crs`` (short: conmon's socket paths); the pod is
removed and the server stopped at the end. A shared 2-vCPU VM moves numbers by 20 % and
more: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchhost import pct  # noqa: E402
from lifecycle import start_server, wait_ready  # noqa: E402

from cri_async import linux  # noqa: E402
from cri_async.api.runtime.v1 import api_pb2 as pb  # noqa: E402
from cri_async.client import CRIClient, container_config, pod_config  # noqa: E402
from cri_async.monitor import execattach  # noqa: E402
from cri_async.monitor.conmon import Conmon  # noqa: E402
from cri_async.network import netns  # noqa: E402
from cri_async.streaming import client  # noqa: E402
from cri_async.streaming.client import Transport  # noqa: E402
from tests.support import images as im  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

MIB = 1 << 20
PORT = 9000
RUN_ROOT = Path("/run/crs")


def ms(samples: list[float]) -> str:
    xs = [s * 1e3 for s in samples]
    return f"p50 {statistics.median(xs):7.2f} ms   p95 {pct(xs, 95):7.2f} ms"


class Pod:
    def __init__(self, cli: CRIClient, pod: str, sleeper: str, run_root: Path) -> None:
        self.cli = cli
        self.pod = pod
        self.sleeper = sleeper
        handler = run_root / "runc" / "default"
        self.runc_root = handler / "state"
        self.bundle = handler / "containers" / sleeper
        self.netns = str(run_root / "ns" / "net" / pod)
        self.socket_dir = str(run_root / "s")


async def exec_stream(p: Pod, transport: Transport, protocols: list[str] | None) -> None:
    req = pb.ExecRequest(container_id=p.sleeper, cmd=["echo", "hi"], stdout=True, stderr=True)
    url = (await p.cli.runtime.Exec(req)).url
    r = await client.run(url, transport=transport, protocols=protocols)
    assert (r.stdout, r.exit_code) == (b"hi\n", 0), r


async def exec_sync(p: Pod) -> None:
    r = await p.cli.exec_sync(p.sleeper, ["echo", "hi"])
    assert (r.stdout, r.exit_code) == (b"hi\n", 0)


def process_spec(p: Pod) -> dict[str, object]:
    spec = json.loads((p.bundle / "config.json").read_text())
    process: dict[str, object] = dict(spec["process"], args=["echo", "hi"], terminal=False)
    process.pop("consoleSize", None)
    return process


async def runc_direct(p: Pod, spec_file: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "runc", f"--root={p.runc_root}", "exec", "--process", str(spec_file), p.sleeper,
        stdin=asyncio.subprocess.DEVNULL, stdout=-1, stderr=-1,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert out == b"hi\n", err


async def conmon_direct(p: Pod, conmon: Conmon, work: Path, process: dict[str, object]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="e", dir=work))
    shutil.rmtree(directory)
    sf = await asyncio.to_thread(execattach.prepare, directory, process)
    session = await conmon.exec_attach(p.sleeper, sf, tty=False, stdin=False)
    try:
        out = b""
        while (chunk := await session.read_output()) is not None:
            out += chunk.data
        assert (out, await session.wait()) == (b"hi\n", 0)
    finally:
        await session.close()


async def read_all(reader: asyncio.StreamReader, want: int) -> None:
    n = 0
    while data := await reader.read(4 * MIB):
        n += len(data)
    assert n == want, n


async def forward(p: Pod, transport: Transport, want: int) -> None:
    req = pb.PortForwardRequest(pod_sandbox_id=p.pod, port=[PORT])
    url = (await p.cli.runtime.PortForward(req)).url
    async with await client.open_port_forward(url, transport=transport, ports=[PORT]) as pf:
        stream = await pf.connect(PORT)
        n = 0
        while data := await stream.read():
            n += len(data)
    assert n == want, (n, await stream.error())


async def direct(p: Pod, want: int) -> None:
    reader, writer = await netns.open_connection(p.netns, PORT)
    try:
        await read_all(reader, want)
    finally:
        writer.close()


async def bench_exec(p: Pod, runs: int, work: Path) -> None:
    process = process_spec(p)
    spec_file = work / "process.json"
    spec_file.write_text(json.dumps(process))
    conmon = Conmon(
        "conmon",
        runtime_path=shutil.which("runc") or "runc",
        runtime_args=[f"--root={p.runc_root}"],
        socket_dir=p.socket_dir,
    )
    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "ExecSync (one RPC)": lambda: exec_sync(p),
        "Exec + SPDY": lambda: exec_stream(p, Transport.SPDY, None),
        "Exec + WebSocket v5": lambda: exec_stream(p, Transport.WEBSOCKET, ["v5.channel.k8s.io"]),
        "floor: runc exec, pipes": lambda: runc_direct(p, spec_file),
        "floor: conmon exec-attach": lambda: conmon_direct(p, conmon, work, process),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for i in range(runs + 3):
        for k in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            await kinds[k]()
            if i >= 3:
                times[k].append(time.perf_counter() - t0)
    print(f"exec `echo hi` on runc, {runs} runs each (interleaved)")
    for k in names:
        print(f"  {k:28} {ms(times[k])}")


async def bench_forward(p: Pod, mib: int, repeat: int) -> None:
    want = mib * MIB
    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "floor: socket into the netns": lambda: direct(p, want),
        "SPDY": lambda: forward(p, Transport.SPDY, want),
        "WebSocket v4": lambda: forward(p, Transport.WEBSOCKET, want),
        "SPDY in WebSocket": lambda: forward(p, Transport.SPDY_OVER_WEBSOCKET, want),
    }
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeat):
        for k, fn in kinds.items():
            t0 = time.perf_counter()
            await fn()
            rates[k].append(mib / (time.perf_counter() - t0))
    print(f"port-forward, {mib} MiB from the pod ({repeat} times each, interleaved)")
    for k, xs in rates.items():
        print(f"  {k:30} best {max(xs):7.0f} MiB/s   median {statistics.median(xs):7.0f} MiB/s")


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="crs-"))
    src = f"#!/bin/sh\nexec dd if=/dev/zero bs=1M count={args.mib} 2>/dev/null\n".encode()
    extra = im.layer([im.File("/src", src, mode=0o755)])
    server = None
    try:
        with LocalRegistry() as reg:
            im.push(reg, "bench/streams", im.busybox_image(extra))
            ref = reg.ref("bench/streams")
            await asyncio.to_thread(RUN_ROOT.mkdir, parents=True, exist_ok=True)
            server = start_server("runc", work, RUN_ROOT, sys.executable, "info", "cri_async.cli")
            await wait_ready(server)
            cli = CRIClient(server.socket)
            try:
                await cli.pull(ref)
                pcfg = pod_config("bench")
                pod = await cli.run_pod(pcfg)
                cids = []
                for name, cmd in (
                    ("sleeper", ["sleep", "100000"]),
                    ("source", ["nc", "-ll", "-p", str(PORT), "-e", "/src"]),
                ):
                    cid = await cli.create_container(
                        pod, container_config(name, ref, command=cmd), pcfg
                    )
                    await cli.start_container(cid)
                    cids.append(cid)
                p = Pod(cli, pod, cids[0], RUN_ROOT)
                await bench_exec(p, args.runs, work)
                await bench_forward(p, args.mib, args.repeat)
                await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
            finally:
                cli.close()
    finally:
        if server is not None:
            server.stop()
        linux.umount(str(RUN_ROOT / "ns"))
        shutil.rmtree(RUN_ROOT, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
