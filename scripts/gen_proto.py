"""Generate cri_async/api/ from proto/ (protobuf messages, mypy stubs, grpclib stubs for gRPC).

Each proto is staged under ``cri_async/api/`` inside a temp root so that protoc emits
package-qualified imports (``cri_async.api.runtime.v1.api_pb2``); the wire packages stay
as declared (``runtime.v1``, ``containerd.task.v2``...), so gRPC routes are
``/runtime.v1.RuntimeService/...`` and ttrpc service names ``containerd.task.v2.Task``.
Imports between our own protos are written relative to ``proto/`` and rewritten to the
staged path on the way.

Only the gRPC services get grpclib stubs; the containerd and ttrpc protos are spoken over
ttrpc (cri_async/ttrpc), which uses the descriptors, not stubs.

Usage: python scripts/gen_proto.py [OUT_ROOT]   (default: the repository root)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_PREFIX = "cri_async/api"
GRPC_PROTOS = ["runtime/v1/api.proto", "admin/v1/admin.proto"]
TTRPC_PROTOS = [
    "ttrpc/ttrpc.proto",
    "containerd/types/mount.proto",
    "containerd/types/task/task.proto",
    "containerd/task/v2/shim.proto",
    "containerd/task/v3/shim.proto",
    "containerd/events/task.proto",
    "containerd/events/ttrpc/v1/events.proto",
    "containerd/runc/options/oci.proto",
    "containerd/runtimeoptions/v1/api.proto",
    "containerd/cgroups/v1/metrics.proto",
    "containerd/cgroups/v2/metrics.proto",
]
PROTOS = GRPC_PROTOS + TTRPC_PROTOS
_IMPORT = re.compile(r'^(import\s+(?:public\s+|weak\s+)?")([^"]+)(";)', re.MULTILINE)


def package_dirs() -> list[str]:
    """Every directory from cri_async/api down to each generated module, parents first."""
    dirs = {STAGE_PREFIX}
    for proto in PROTOS:
        parts = Path(proto).parent.parts
        for i in range(1, len(parts) + 1):
            dirs.add(str(Path(STAGE_PREFIX, *parts[:i])))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def _stage(src: Path, dst: Path) -> None:
    """Copy one proto, pointing imports of our own protos at their staged paths."""

    def rewrite(m: re.Match[str]) -> str:
        target = m.group(2)
        if target in PROTOS:
            target = f"{STAGE_PREFIX}/{target}"
        return m.group(1) + target + m.group(3)

    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(_IMPORT.sub(rewrite, src.read_text()))


def _protoc(stage: str, out_root: Path, protos: list[str], *, grpc: bool) -> None:
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{stage}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        *([f"--grpclib_python_out={out_root}"] if grpc else []),
        *[f"{STAGE_PREFIX}/{p}" for p in protos],
    ]
    subprocess.run(cmd, check=True, env=env, cwd=stage)


def generate(out_root: Path) -> list[Path]:
    """Generate into ``out_root``; returns the generated files (relative to out_root)."""
    dirs = package_dirs()
    with tempfile.TemporaryDirectory() as stage:
        for proto in PROTOS:
            _stage(ROOT / "proto" / proto, Path(stage, STAGE_PREFIX, proto))
        for d in dirs:
            (out_root / d).mkdir(parents=True, exist_ok=True)
        _protoc(stage, out_root, GRPC_PROTOS, grpc=True)
        _protoc(stage, out_root, TTRPC_PROTOS, grpc=False)
    made: list[Path] = []
    for d in dirs:
        init = out_root / d / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by scripts/gen_proto.py; do not edit."""\n')
        made.append(Path(d) / "__init__.py")
    for proto in PROTOS:
        stem = str(Path(STAGE_PREFIX, proto).with_suffix(""))
        suffixes = (
            ("_pb2.py", "_pb2.pyi", "_grpc.py") if proto in GRPC_PROTOS else ("_pb2.py", "_pb2.pyi")
        )
        made.extend(Path(stem + s) for s in suffixes)
    return made


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for f in generate(target):
        print(f)
