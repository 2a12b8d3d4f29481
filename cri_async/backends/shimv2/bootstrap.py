"""Finding a shim binary and running its ``start`` and ``delete`` commands.

The pure parts (name resolution, argv, environment, parsing what ``start`` prints) are
functions; :func:`run_start` and :func:`run_delete` run the binary. Facts, as containerd
1.6 and 2.x do it:

* Runtime type to binary: ``io.containerd.runc.v2`` -> ``containerd-shim-runc-v2``, the
  last two dot-separated parts (``io.containerd.kata.v2`` -> ``containerd-shim-kata-v2``,
  ``io.containerd.runsc.v1`` -> ``containerd-shim-runsc-v1``), looked up on ``PATH``; an
  absolute path is used as is.
* Both commands run with the bundle as working directory and the arguments
  ``-namespace NS -address ADDR -publish-binary BIN [-debug] -id ID`` then ``start``, or
  ``-bundle DIR delete``. The environment adds ``TTRPC_ADDRESS`` (the events endpoint),
  ``GRPC_ADDRESS`` and ``NAMESPACE`` (2.x), ``MAX_SHIM_VERSION=2`` (2.x: the bootstrap
  versions the caller accepts; containerd sends 2 too) and ``GOMAXPROCS=2``.
* ``start`` may read a protobuf Any of runtime options on stdin (runc: ``shim_cgroup``),
  forks the long-lived shim (which serves ttrpc on a socket it already bound) and prints
  the address: a bare ``unix:///run/containerd/s/<sha256>`` (1.x shims), or JSON
  ``{"version": 3, "address": ..., "protocol": "ttrpc"}`` (2.x shims). The address is also
  written to ``<bundle>/address``. The socket name hashes ``-address``, the namespace and
  the grouping id, so shims of two callers with different ``-address`` never collide.
* ``delete`` cleans up after a shim that is gone (OCI runtime delete, rootfs unmount) and
  prints a serialised DeleteResponse. The runc shim finds the task's state from
  ``<dirname(bundle)>/<id>``: bundles must be named by their task id.

stdout and stderr go to temporary files, not pipes: a shim whose daemon inherited a pipe
would otherwise keep us waiting for its end of file for the life of the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cri_async.api.containerd.task.v2 import shim_pb2

from .records import ExitInfo, exit_info

__all__ = [
    "Bootstrap",
    "ShimCommandError",
    "ShimNotFound",
    "binary_name",
    "parse_start_output",
    "resolve_binary",
    "run_delete",
    "run_start",
    "shim_argv",
    "shim_env",
]

MAX_SHIM_VERSION = 2


class ShimNotFound(FileNotFoundError):
    """No shim binary for the runtime type."""


class ShimCommandError(RuntimeError):
    """``start`` or ``delete`` failed; the message carries what the shim printed."""


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """How to reach a started shim: its ttrpc address and task API version."""

    address: str
    version: int = 2
    protocol: str = "ttrpc"

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "address": self.address, "protocol": self.protocol}
        )


def binary_name(runtime_type: str) -> str:
    """``io.containerd.runc.v2`` -> ``containerd-shim-runc-v2``. Raises ``ValueError``."""
    parts = runtime_type.split(".")
    if len(parts) < 2 or not all(parts[-2:]) or "/" in runtime_type:
        raise ValueError(
            f"invalid runtime type {runtime_type!r}: expected a name like "
            "'io.containerd.runc.v2' or an absolute path to a shim binary"
        )
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def resolve_binary(runtime_type: str, *, search_path: str | None = None) -> str:
    """The shim executable for ``runtime_type`` (a type name or an absolute path).

    ``search_path`` defaults to ``$PATH``. Raises :class:`ShimNotFound`.
    """
    if os.path.isabs(runtime_type):
        if not os.access(runtime_type, os.X_OK):
            raise ShimNotFound(f"shim binary {runtime_type} does not exist or is not executable")
        return runtime_type
    name = binary_name(runtime_type)
    found = shutil.which(name, path=search_path)
    if found is None:
        raise ShimNotFound(f"no {name} on PATH for runtime type {runtime_type!r}")
    return found


def shim_argv(
    binary: str,
    *,
    namespace: str,
    address: str,
    publish_binary: str,
    id: str,
    action: str,
    bundle: str = "",
    debug: bool = False,
) -> list[str]:
    argv = [binary, "-namespace", namespace, "-address", address]
    argv += ["-publish-binary", publish_binary]
    if debug:
        argv.append("-debug")
    argv += ["-id", id]
    if bundle:
        argv += ["-bundle", bundle]
    return [*argv, action]


def shim_env(
    base: Mapping[str, str], *, ttrpc_address: str, grpc_address: str, namespace: str
) -> dict[str, str]:
    env = dict(base)
    env.update(
        GOMAXPROCS="2",
        TTRPC_ADDRESS=ttrpc_address,
        GRPC_ADDRESS=grpc_address,
        NAMESPACE=namespace,
        MAX_SHIM_VERSION=str(MAX_SHIM_VERSION),
    )
    return env


def parse_start_output(out: bytes) -> Bootstrap:
    """What ``start`` printed: a bare address (version 2) or 2.x bootstrap JSON.

    Raises ``ValueError`` for anything else, for a protocol other than ttrpc, or for a
    version this client does not speak.
    """
    text = out.decode(errors="replace").strip()
    if not text:
        raise ValueError("shim start printed no address")
    if text.startswith("{"):
        try:
            params = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"shim start printed malformed bootstrap JSON: {e}") from e
        if not isinstance(params, dict):
            raise ValueError(f"shim start printed {text!r}, not bootstrap parameters")
        version = params.get("version")
        address = params.get("address")
        protocol = params.get("protocol", "ttrpc")
        if not isinstance(version, int) or not isinstance(address, str) or not address:
            raise ValueError(f"shim start printed incomplete bootstrap parameters: {text!r}")
        if version < 2:
            return Bootstrap(text, 2)
        if version > 3:
            raise ValueError(f"shim speaks task API version {version}; only 2 and 3 are known")
        if protocol != "ttrpc":
            raise ValueError(f"shim wants protocol {protocol!r}; only ttrpc is spoken here")
        return Bootstrap(address, version, protocol)
    if any(c.isspace() for c in text):
        raise ValueError(f"shim start printed {text!r}, not an address")
    return Bootstrap(text)


def _tail(data: bytes, limit: int = 2000) -> str:
    text = data.decode(errors="replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


async def _run(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdin: bytes,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=out,
            stderr=err,
        )
        try:
            async with asyncio.timeout(timeout):
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()
                proc.stdin.close()
                rc = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read()


async def run_start(
    argv: Sequence[str],
    *,
    bundle: str,
    env: Mapping[str, str],
    options: bytes = b"",
    timeout: float = 30.0,
) -> Bootstrap:
    """Run ``shim ... start`` (argv from :func:`shim_argv`); returns where to connect."""
    try:
        rc, out, err = await _run(argv, cwd=bundle, env=env, stdin=options, timeout=timeout)
    except TimeoutError:
        raise ShimCommandError(f"{argv[0]} start did not finish within {timeout:g}s") from None
    if rc != 0:
        raise ShimCommandError(f"{argv[0]} start failed (exit {rc}): {_tail(err + out)}")
    try:
        return parse_start_output(out)
    except ValueError as e:
        raise ShimCommandError(f"{argv[0]} start: {e}; stderr: {_tail(err)}") from None


async def run_delete(
    argv: Sequence[str], *, bundle: str, env: Mapping[str, str], timeout: float = 30.0
) -> ExitInfo:
    """Run ``shim ... delete`` for a shim that is gone; returns what it reports of the
    task's end (runc: 137, the pid from ``init.pid``, now). ``bundle`` must exist: it is
    the working directory, as containerd runs it."""
    try:
        rc, out, err = await _run(argv, cwd=bundle, env=env, stdin=b"", timeout=timeout)
    except TimeoutError:
        raise ShimCommandError(f"{argv[0]} delete did not finish within {timeout:g}s") from None
    if rc != 0:
        raise ShimCommandError(f"{argv[0]} delete failed (exit {rc}): {_tail(err + out)}")
    try:
        return exit_info(shim_pb2.DeleteResponse.FromString(out))
    except DecodeError as e:
        raise ShimCommandError(f"{argv[0]} delete printed no DeleteResponse: {e}") from None
