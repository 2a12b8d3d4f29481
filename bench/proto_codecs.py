"""Benchmark Python protobuf runtimes on the CRI ``ListContainersResponse``.

What it measures
----------------
For each codec -- the official ``protobuf`` runtime (upb C backend, code from
``grpc_tools.protoc --python_out``), betterproto2 (``betterproto2-compiler``) and
betterproto 2.0.0b7 -- the script generates code from the CRI ``api.proto`` into a
temporary directory, builds a ``ListContainersResponse`` with N (default 1000)
kubelet-like containers and times, over repeated runs after a warm-up:

* ``build+serialize``: plain Python records -> messages -> bytes (what our server
  does for every ``ListContainers`` call);
* ``parse+read``: bytes -> message, then reading every field of every container
  (what a client such as kubelet does).

Both are timed with ``time.process_time()`` (CPU) and ``time.perf_counter()``
(wall); median and p90 are reported in ms per call (30 runs, or fewer -- at least
10 -- once a measurement has taken ``--budget-s``), with the serialized size.
The bytes of every codec are cross-checked against the protobuf runtime (sizes
equal, each codec's bytes parse with protobuf to the same message, each codec
parses the protobuf bytes and reads back the same content).

With ``--loop-latency`` it also shows the event-loop effect: in one asyncio loop a
task builds+serializes the response over and over (back to back by default, or one
call every ``--list-interval-ms``) while another task wants to run a tiny
Version-like operation every 1 ms (open loop: calls that fall due while the loop is
blocked all count); the delay between when a call wanted to run and when it ran is
reported (p50/p99) per codec, next to an idle baseline. This is the latency that
every other RPC on the same event loop sees while lists are being served.

Codecs whose packages are not installed are reported as such and skipped.

Rerun (see bench/README.md for setting up the venv)::

    /opt/bench-venv/bin/python bench/proto_codecs.py
    /opt/bench-venv/bin/python bench/proto_codecs.py --loop-latency --json /tmp/bench.json
    /opt/bench-venv/bin/python bench/proto_codecs.py --proto /path/to/runtime/v1/api.proto
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROTO = REPO_ROOT / "proto" / "runtime" / "v1" / "api.proto"
PROTO_REL = "runtime/v1/api.proto"
ALL_CODECS = ("protobuf", "betterproto2", "betterproto")
VERSION_TICK_S = 0.001
MIN_RUNS = 10
NEXT_REQUEST_GAP_S = 1e-6


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """What the runtime keeps in memory about a container (input of ListContainers)."""

    id: str
    pod_sandbox_id: str
    name: str
    attempt: int
    image: str
    image_ref: str
    created_at: int
    labels: dict[str, str]
    annotations: dict[str, str]


_NAMESPACES = ("default", "kube-system", "monitoring", "payments", "search", "ingress-nginx")
_APPS = (
    ("api", "docker.io/acme/api", "v2.14.3"),
    ("worker", "docker.io/acme/worker", "v2.14.3"),
    ("nginx", "docker.io/library/nginx", "1.27.3"),
    ("redis", "docker.io/library/redis", "7.4.1"),
    ("node-exporter", "quay.io/prometheus/node-exporter", "v1.8.2"),
    ("coredns", "registry.k8s.io/coredns/coredns", "v1.11.3"),
    ("istio-proxy", "docker.io/istio/proxyv2", "1.24.1"),
    ("fluent-bit", "cr.fluentbit.io/fluent/fluent-bit", "3.2.2"),
)


def make_records(n: int, seed: int) -> list[ContainerRecord]:
    """N containers in pods of 1-3 containers, labelled/annotated the way kubelet does it.

    Labels: the four io.kubernetes.* labels kubelet sets on every container plus two
    application labels (6). Annotations: container hash, restart count, termination
    message path and policy (4).
    """
    rng = random.Random(seed)
    records: list[ContainerRecord] = []
    base_ns = 1_795_000_000 * 1_000_000_000
    while len(records) < n:
        namespace = rng.choice(_NAMESPACES)
        app, repo, tag = rng.choice(_APPS)
        pod_name = f"{app}-{rng.getrandbits(40):010x}-{rng.getrandbits(20):05x}"
        pod_uid = "-".join(
            f"{rng.getrandbits(bits):0{bits // 4}x}" for bits in (32, 16, 16, 16, 48)
        )
        sandbox_id = f"{rng.getrandbits(256):064x}"
        for index in range(min(rng.randint(1, 3), n - len(records))):
            c_app, c_repo, c_tag = (app, repo, tag) if index == 0 else rng.choice(_APPS)
            name = c_app if index == 0 else f"{c_app}-sidecar"
            attempt = rng.choice((0, 0, 0, 0, 1, 2))
            labels = {
                "io.kubernetes.container.name": name,
                "io.kubernetes.pod.name": pod_name,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": pod_uid,
                "app.kubernetes.io/name": app,
                "pod-template-hash": pod_name.split("-")[-2],
            }
            annotations = {
                "io.kubernetes.container.hash": f"{rng.getrandbits(32):08x}",
                "io.kubernetes.container.restartCount": str(attempt),
                "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
                "io.kubernetes.container.terminationMessagePolicy": "File",
            }
            digest = f"sha256:{rng.getrandbits(256):064x}"
            records.append(
                ContainerRecord(
                    id=f"{rng.getrandbits(256):064x}",
                    pod_sandbox_id=sandbox_id,
                    name=name,
                    attempt=attempt,
                    image=f"{c_repo}:{c_tag}",
                    image_ref=f"{c_repo}@{digest}",
                    created_at=base_ns + rng.randrange(30 * 86_400 * 1_000_000_000),
                    labels=labels,
                    annotations=annotations,
                )
            )
    return records


# --------------------------------------------------------------------------- codecs


@dataclass
class Codec:
    """A generated CRI module plus the handful of names the workload needs."""

    key: str
    version: str
    module: ModuleType
    running: Any  # ContainerState.CONTAINER_RUNNING in this codec's flavour

    def build(self, records: Sequence[ContainerRecord]) -> Any:
        mod = self.module
        container, metadata, image_spec = mod.Container, mod.ContainerMetadata, mod.ImageSpec
        return mod.ListContainersResponse(
            containers=[
                container(
                    id=r.id,
                    pod_sandbox_id=r.pod_sandbox_id,
                    metadata=metadata(name=r.name, attempt=r.attempt),
                    image=image_spec(image=r.image),
                    image_ref=r.image_ref,
                    state=self.running,
                    created_at=r.created_at,
                    labels=r.labels,
                    annotations=r.annotations,
                )
                for r in records
            ]
        )

    def build_serialize(self, records: Sequence[ContainerRecord]) -> bytes:
        data: bytes = self.build(records).SerializeToString()
        return data

    def parse(self, data: bytes) -> Any:
        return self.module.ListContainersResponse.FromString(data)

    def parse_read(self, data: bytes) -> int:
        """Parse, then touch every field of every container; returns a content checksum."""
        total = 0
        for c in self.parse(data).containers:
            total += len(c.id) + len(c.pod_sandbox_id) + len(c.image_ref) + len(c.image.image)
            total += len(c.metadata.name) + c.metadata.attempt + int(c.state)
            total += c.created_at % 1_000_003
            for key, value in c.labels.items():
                total += len(key) + len(value)
            for key, value in c.annotations.items():
                total += len(key) + len(value)
        return total

    def version_rpc(self) -> bytes:
        """The tiny Version-like operation used by the event-loop test."""
        resp = self.module.VersionResponse(
            version="0.1.0",
            runtime_name="cri-async",
            runtime_version="0.1.0",
            runtime_api_version="v1",
        )
        data: bytes = resp.SerializeToString()
        return data


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_modules(*names: str) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _plugin(name: str, env: dict[str, str]) -> str | None:
    return shutil.which(name, path=env["PATH"])


def _run_protoc(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *args, PROTO_REL]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def load_codec(key: str, src: Path, gen_root: Path, env: dict[str, str]) -> Codec | str:
    """Generate code for ``key`` and import it; returns a reason string if unavailable."""
    out = gen_root / f"gen_{key}"
    out.mkdir()
    inc = f"-I{src}"
    if key == "protobuf":
        _run_protoc([inc, f"--python_out={out}"], out, env)
        module = importlib.import_module(f"gen_{key}.runtime.v1.api_pb2")
        version = f"{_dist_version('protobuf')}"
        return Codec(key, version, module, module.ContainerState.Value("CONTAINER_RUNNING"))
    if key == "betterproto2":
        missing = _missing_modules("betterproto2", "betterproto2_compiler")
        plugin = _plugin("protoc-gen-python_betterproto2", env)
        if missing or plugin is None:
            return f"not installed ({', '.join(missing) or 'protoc-gen-python_betterproto2'})"
        if _plugin("ruff", env) is None:  # the betterproto2 compiler formats its output with ruff
            return "not installed (ruff, needed by betterproto2-compiler)"
        _run_protoc(
            [
                inc,
                f"--plugin=protoc-gen-python_betterproto2={plugin}",
                f"--python_betterproto2_out={out}",
                "--python_betterproto2_opt=client_generation=none,server_generation=none",
            ],
            out,
            env,
        )
        version = (
            f"{_dist_version('betterproto2')} (compiler {_dist_version('betterproto2-compiler')})"
        )
    elif key == "betterproto":
        missing = _missing_modules("betterproto", "jinja2", "black", "isort", "grpclib")
        plugin = _plugin("protoc-gen-python_betterproto", env)
        if missing or plugin is None:
            reason = ", ".join(missing) or "protoc-gen-python_betterproto"
            return f"not installed ({reason}; pip install 'betterproto[compiler]==2.0.0b7')"
        _run_protoc(
            [
                inc,
                f"--plugin=protoc-gen-python_betterproto={plugin}",
                f"--python_betterproto_out={out}",
            ],
            out,
            env,
        )
        version = f"{_dist_version('betterproto')}"
    else:
        raise ValueError(f"unknown codec {key!r}")
    module = importlib.import_module(f"gen_{key}.runtime.v1")
    return Codec(key, version, module, module.ContainerState.CONTAINER_RUNNING)


# --------------------------------------------------------------------------- timing


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Series:
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        return {
            "cpu_ms_median": percentile(self.cpu_ms, 50),
            "cpu_ms_p90": percentile(self.cpu_ms, 90),
            "wall_ms_median": percentile(self.wall_ms, 50),
            "wall_ms_p90": percentile(self.wall_ms, 90),
            "runs": len(self.cpu_ms),
        }


def measure(fn: Callable[[], object], runs: int, warmup: int, budget_s: float) -> Series:
    """Time ``fn`` ``runs`` times after ``warmup`` calls.

    Stops early once ``budget_s`` seconds of timed runs have passed and at least
    ``MIN_RUNS`` runs were taken, so the slowest codec does not dominate the run time.
    """
    for _ in range(warmup):
        fn()
    gc.collect()
    series = Series()
    start = time.perf_counter()
    for i in range(runs):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        c1, w1 = time.process_time(), time.perf_counter()
        series.cpu_ms.append((c1 - c0) * 1e3)
        series.wall_ms.append((w1 - w0) * 1e3)
        if i + 1 >= MIN_RUNS and w1 - start >= budget_s:
            break
    return series


def cross_check(ref: Codec, codec: Codec, records: Sequence[ContainerRecord]) -> None:
    """Assert that ``codec`` and the protobuf runtime agree on the wire."""
    ref_bytes = ref.build_serialize(records)
    ref_msg = ref.parse(ref_bytes)
    data = codec.build_serialize(records)
    if len(data) != len(ref_bytes):
        raise AssertionError(f"{codec.key}: {len(data)} bytes, protobuf {len(ref_bytes)}")
    if ref.parse(data) != ref_msg:
        raise AssertionError(f"{codec.key}: its bytes parse (protobuf) to a different message")
    roundtrip = codec.parse(ref_bytes).SerializeToString()
    if ref.parse(roundtrip) != ref_msg:
        raise AssertionError(f"{codec.key}: protobuf bytes do not round-trip through it")
    if codec.parse_read(ref_bytes) != ref.parse_read(ref_bytes):
        raise AssertionError(f"{codec.key}: reads different content from the protobuf bytes")
    if len(codec.parse(ref_bytes).containers) != len(records):
        raise AssertionError(f"{codec.key}: wrong container count")


async def _loop_latency(
    codec: Codec | None,
    records: Sequence[ContainerRecord],
    duration_s: float,
    interval_s: float,
    version_rpc: Callable[[], bytes],
) -> tuple[list[float], int]:
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    delays: list[float] = []
    lists = 0

    async def version_task() -> None:
        # Open loop: a Version call is "wanted" every tick whether or not the loop is free,
        # so a loop blocked for 100 ms yields ~100 late calls (no coordinated omission).
        due = loop.time() + VERSION_TICK_S
        while due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            while due <= now and due < end:
                delays.append((now - due) * 1e3)
                version_rpc()
                due += VERSION_TICK_S

    async def list_task(c: Codec) -> None:
        nonlocal lists
        next_start = loop.time()
        while loop.time() < end:
            c.build_serialize(records)
            lists += 1
            next_start += interval_s
            now = loop.time()
            next_start = max(next_start, now)  # slower than the offered rate: back to back
            # Wait on a timer, never sleep(0): the next list request arrives as a new event,
            # so callbacks already due (the Version calls) run first, as in a real server.
            await asyncio.sleep(max(next_start - now, NEXT_REQUEST_GAP_S))

    tasks = [version_task()] if codec is None else [version_task(), list_task(codec)]
    await asyncio.gather(*tasks)
    return delays, lists


def loop_latency(
    codec: Codec | None,
    ref: Codec,
    records: Sequence[ContainerRecord],
    duration_s: float,
    interval_s: float,
) -> dict[str, float]:
    gc.collect()
    rpc = (codec or ref).version_rpc
    delays, lists = asyncio.run(_loop_latency(codec, records, duration_s, interval_s, rpc))
    return {
        "version_delay_ms_p50": percentile(delays, 50),
        "version_delay_ms_p99": percentile(delays, 99),
        "version_delay_ms_max": max(delays) if delays else float("nan"),
        "version_samples": float(len(delays)),
        "list_calls": float(lists),
    }


# --------------------------------------------------------------------------- main


def _environment() -> dict[str, Any]:
    api_implementation = importlib.import_module("google.protobuf.internal.api_implementation")
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "protobuf": _dist_version("protobuf"),
        "protobuf_api_implementation": api_implementation.Type(),
        "grpcio_tools": _dist_version("grpcio-tools"),
        "betterproto2": _dist_version("betterproto2"),
        "betterproto2_compiler": _dist_version("betterproto2-compiler"),
        "betterproto": _dist_version("betterproto"),
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--proto", type=Path, default=DEFAULT_PROTO, help="CRI api.proto")
    p.add_argument("-n", "--containers", type=int, default=1000, help="containers per response")
    p.add_argument("--runs", type=int, default=30, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before measuring")
    p.add_argument(
        "--budget-s",
        type=float,
        default=10.0,
        help=f"stop a measurement after this many seconds (but not before {MIN_RUNS} runs)",
    )
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument(
        "--codecs",
        default=",".join(ALL_CODECS),
        help=f"comma-separated subset of {','.join(ALL_CODECS)}",
    )
    p.add_argument("--json", type=Path, help="write machine-readable results here")
    p.add_argument("--loop-latency", action="store_true", help="also run the event-loop test")
    p.add_argument("--loop-duration", type=float, default=3.0, help="seconds per codec")
    p.add_argument(
        "--list-interval-ms",
        type=float,
        default=0.0,
        help="start a list call every this many ms in the loop test (0 = back to back)",
    )
    args = p.parse_args(argv)
    args.codec_list = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = set(args.codec_list) - set(ALL_CODECS)
    if unknown:
        p.error(f"unknown codec(s): {', '.join(sorted(unknown))}")
    return args


def _fmt(value: float) -> str:
    return f"{value:8.2f}"


def _load_codecs(
    keys: Sequence[str], src: Path, gen_root: Path, env: dict[str, str], results: dict[str, Any]
) -> dict[str, Codec]:
    codecs: dict[str, Codec] = {}
    for key in dict.fromkeys(["protobuf", *keys]):  # protobuf is always loaded: the reference
        try:
            loaded = load_codec(key, src, gen_root, env)
        except (RuntimeError, ImportError) as exc:
            if key == "protobuf":
                raise
            loaded = f"code generation/import failed: {exc}"
        if isinstance(loaded, str):
            print(f"{key}: {loaded} -- skipped")
            results["codecs"][key] = {"status": loaded}
        else:
            codecs[key] = loaded
    return codecs


def _run(
    args: argparse.Namespace,
    proto: Path,
    env: dict[str, str],
    records: Sequence[ContainerRecord],
    results: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory(prefix="cri-bench-") as tmp:
        src = Path(tmp) / "src"
        (src / PROTO_REL).parent.mkdir(parents=True)
        shutil.copyfile(proto, src / PROTO_REL)
        gen_root = Path(tmp) / "gen"
        gen_root.mkdir()
        sys.path.insert(0, str(gen_root))
        codecs = _load_codecs(args.codec_list, src, gen_root, env, results)
        ref = codecs["protobuf"]
        ref_size = len(ref.build_serialize(records))
        measured = {k: c for k, c in codecs.items() if k in args.codec_list}
        for key, codec in measured.items():
            print(f"measuring {key} ...", flush=True)
            cross_check(ref, codec, records)
            data = codec.build_serialize(records)
            ser = measure(
                partial(codec.build_serialize, records), args.runs, args.warmup, args.budget_s
            )
            par = measure(partial(codec.parse_read, data), args.runs, args.warmup, args.budget_s)
            results["codecs"][key] = {
                "status": "ok",
                "version": codec.version,
                "size_bytes": len(data),
                "cross_check": f"ok vs protobuf ({ref_size} bytes)",
                "build_serialize": ser.summary(),
                "parse_read": par.summary(),
            }

        if args.loop_latency:
            print("measuring event-loop latency ...", flush=True)
            interval = args.list_interval_ms / 1e3
            results["loop_latency"] = {
                "list_interval_ms": args.list_interval_ms,
                "version_tick_ms": VERSION_TICK_S * 1e3,
                "duration_s": args.loop_duration,
                "idle": loop_latency(None, ref, records, args.loop_duration, interval),
            }
            for key, codec in measured.items():
                results["loop_latency"][key] = loop_latency(
                    codec, ref, records, args.loop_duration, interval
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    proto: Path = args.proto.resolve()
    if not proto.is_file():
        print(f"error: {proto} not found (pass --proto PATH)", file=sys.stderr)
        return 2
    missing = _missing_modules("google.protobuf", "grpc_tools")
    if missing:
        print(f"error: need protobuf and grpcio-tools ({', '.join(missing)})", file=sys.stderr)
        return 2

    env_info = _environment()
    print(
        f"python {env_info['python']} ({sys.executable}); protobuf {env_info['protobuf']} "
        f"api_implementation={env_info['protobuf_api_implementation']}; "
        f"grpcio-tools {env_info['grpcio_tools']}; {env_info['cpu_count']} CPUs"
    )
    if env_info["protobuf_api_implementation"] != "upb":
        print("error: protobuf is not using the upb backend", file=sys.stderr)
        return 2
    print(f"proto: {proto}; {args.containers} containers; {args.runs} runs after {args.warmup}")

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    records = make_records(args.containers, args.seed)
    results: dict[str, Any] = {
        "environment": env_info,
        "workload": {
            "proto": str(proto),
            "message": "runtime.v1.ListContainersResponse",
            "containers": args.containers,
            "runs": args.runs,
            "warmup": args.warmup,
            "budget_s": args.budget_s,
            "seed": args.seed,
        },
        "codecs": {},
    }

    _run(args, proto, env, records, results)
    _print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _print_table(results: dict[str, Any]) -> None:
    ok = {k: v for k, v in results["codecs"].items() if v["status"] == "ok"}
    base = ok.get("protobuf", {}).get("build_serialize", {}).get("cpu_ms_median")
    print()
    print(
        f"ms per call, ListContainersResponse with {results['workload']['containers']} containers"
    )
    print(
        f"{'codec':<13} {'version':<26} {'bytes':>7} | {'build+serialize':<15} "
        f"{'cpu p50':>8} {'cpu p90':>8} {'wall p50':>8} {'x pb':>5} {'runs':>4} | "
        f"{'parse+read':<10} {'cpu p50':>8} {'cpu p90':>8} {'wall p50':>8} {'runs':>4}"
    )
    for key, row in results["codecs"].items():
        if row["status"] != "ok":
            print(f"{key:<13} {row['status']}")
            continue
        s, p = row["build_serialize"], row["parse_read"]
        ratio = f"{s['cpu_ms_median'] / base:5.1f}" if base else "    -"
        print(
            f"{key:<13} {row['version']:<26} {row['size_bytes']:>7} | {'':<15} "
            f"{_fmt(s['cpu_ms_median'])} {_fmt(s['cpu_ms_p90'])} {_fmt(s['wall_ms_median'])} "
            f"{ratio} {s['runs']:>4} | {'':<10} "
            f"{_fmt(p['cpu_ms_median'])} {_fmt(p['cpu_ms_p90'])} {_fmt(p['wall_ms_median'])} "
            f"{p['runs']:>4}"
        )
    loop = results.get("loop_latency")
    if loop:
        interval = loop["list_interval_ms"]
        offered = f"a list call every {interval:.0f} ms" if interval else "list calls back to back"
        print()
        print(
            f"event loop: Version-like call wanted every {loop['version_tick_ms']:.0f} ms, "
            f"{offered}, {loop['duration_s']:.1f} s per row; delay = ran - wanted"
        )
        print(f"{'load':<13} {'lists':>6} {'calls':>6} {'delay p50':>10} {'p99':>8} {'max':>8}")
        for key, row in loop.items():
            if not isinstance(row, dict):
                continue
            print(
                f"{key:<13} {int(row['list_calls']):>6} {int(row['version_samples']):>6} "
                f"{row['version_delay_ms_p50']:>10.2f} {row['version_delay_ms_p99']:>8.2f} "
                f"{row['version_delay_ms_max']:>8.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
