"""Generate cri_async/api/ from proto/ (protobuf messages, grpclib stubs, mypy stubs).

The proto is staged under ``cri_async/api/`` inside a temp root so that protoc emits
package-qualified imports (``cri_async.api.runtime.v1.api_pb2``); the wire package stays
``runtime.v1``, so gRPC routes are ``/runtime.v1.RuntimeService/...``.

Usage: python scripts/gen_proto.py [OUT_ROOT]   (default: the repository root)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ["runtime/v1/api.proto", "admin/v1/admin.proto"]
PACKAGE_DIRS = [
    "cri_async/api",
    "cri_async/api/runtime",
    "cri_async/api/runtime/v1",
    "cri_async/api/admin",
    "cri_async/api/admin/v1",
]


def generate(out_root: Path) -> list[Path]:
    """Generate into ``out_root``; returns the generated files (relative to out_root)."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory() as stage:
        for proto in PROTOS:
            dst = Path(stage, "cri_async/api", proto)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "proto" / proto, dst)
        for d in PACKAGE_DIRS:
            (out_root / d).mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{stage}",
            f"--python_out={out_root}",
            f"--grpclib_python_out={out_root}",
            f"--mypy_out={out_root}",
            *[f"cri_async/api/{p}" for p in PROTOS],
        ]
        subprocess.run(cmd, check=True, env=env, cwd=stage)
    made: list[Path] = []
    for d in PACKAGE_DIRS:
        init = out_root / d / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by scripts/gen_proto.py; do not edit."""\n')
        made.append(Path(d) / "__init__.py")
    for proto in PROTOS:
        stem = Path("cri_async/api", proto).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_grpc.py"):
            made.append(Path(str(stem) + suffix))
    return made


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for f in generate(target):
        print(f)
