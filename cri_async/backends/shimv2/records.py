"""What the shim task API returns, as frozen records, and the conversions (pure).

Nothing outside this package sees the generated protobuf: answers become these records and
typed arguments become request messages here. Times are Unix nanoseconds; a shim's "zero"
timestamp (Go's year 1, sent for a process that has not exited) becomes ``None``.

Any-typed fields carry containerd's type URLs without a ``type.googleapis.com/`` prefix
(containerd's typeurl package): protobuf options by message name, OCI runtime-spec
structures as JSON under ``types.containerd.io/opencontainers/runtime-spec/1/...``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2

from cri_async.api.containerd.runc.options import oci_pb2
from cri_async.api.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions_pb2
from cri_async.api.containerd.task.v2 import shim_pb2
from cri_async.api.containerd.types import mount_pb2
from cri_async.api.containerd.types.task import task_pb2

__all__ = [
    "PROCESS_SPEC_URL",
    "RESOURCES_URL",
    "RUNC_OPTIONS_URL",
    "RUNTIME_OPTIONS_URL",
    "ExitInfo",
    "Mount",
    "ProcessInfo",
    "ShimInfo",
    "Stdio",
    "TaskState",
    "TaskStatus",
    "exit_info",
    "json_any",
    "process_infos",
    "runc_options",
    "runtime_options",
    "task_state",
    "timestamp_ns",
]

RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
RUNTIME_OPTIONS_URL = "runtimeoptions.v1.Options"
PROCESS_SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

# Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds: "never" in a shim's answer.
_GO_ZERO_SECONDS = -62135596800


class TaskStatus(enum.Enum):
    UNKNOWN = task_pb2.UNKNOWN
    CREATED = task_pb2.CREATED
    RUNNING = task_pb2.RUNNING
    STOPPED = task_pb2.STOPPED
    PAUSED = task_pb2.PAUSED
    PAUSING = task_pb2.PAUSING


@dataclass(frozen=True, slots=True)
class Mount:
    """A rootfs mount for Create; the shim mounts them in order on ``<bundle>/rootfs``."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""

    def to_proto(self) -> mount_pb2.Mount:
        return mount_pb2.Mount(
            type=self.type, source=self.source, target=self.target, options=self.options
        )


@dataclass(frozen=True, slots=True)
class Stdio:
    """FIFO paths of a process's stdio ("" = none); with ``terminal`` only stdout is used."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """An exited process (Wait, Delete, ``shim delete``). ``exit_status`` is 128+N for a
    death by signal N, as the shim reports it."""

    pid: int
    exit_status: int
    exited_at_ns: int | None


@dataclass(frozen=True, slots=True)
class TaskState:
    id: str
    exec_id: str
    bundle: str
    pid: int
    status: TaskStatus
    stdio: Stdio
    exit_status: int
    exited_at_ns: int | None


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A pid of the task; ``exec_id`` when the shim says which exec it belongs to."""

    pid: int
    exec_id: str | None = None


@dataclass(frozen=True, slots=True)
class ShimInfo:
    """Connect's answer. ``task_pid`` is 0 while the shim has no such task."""

    shim_pid: int
    task_pid: int
    version: str


def timestamp_ns(ts: timestamp_pb2.Timestamp) -> int | None:
    if ts.seconds <= _GO_ZERO_SECONDS or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.seconds * 1_000_000_000 + ts.nanos


def exit_info(
    msg: shim_pb2.DeleteResponse | shim_pb2.WaitResponse, pid: int | None = None
) -> ExitInfo:
    """From Delete's answer (has a pid) or Wait's (pass the pid the caller knows)."""
    got_pid = msg.pid if isinstance(msg, shim_pb2.DeleteResponse) else (pid or 0)
    return ExitInfo(got_pid, msg.exit_status, timestamp_ns(msg.exited_at))


def task_state(msg: shim_pb2.StateResponse) -> TaskState:
    try:
        status = TaskStatus(msg.status)
    except ValueError:
        status = TaskStatus.UNKNOWN
    return TaskState(
        id=msg.id,
        exec_id=msg.exec_id,
        bundle=msg.bundle,
        pid=msg.pid,
        status=status,
        stdio=Stdio(msg.stdin, msg.stdout, msg.stderr, msg.terminal),
        exit_status=msg.exit_status,
        exited_at_ns=timestamp_ns(msg.exited_at),
    )


def process_infos(msg: shim_pb2.PidsResponse) -> tuple[ProcessInfo, ...]:
    out = []
    for p in msg.processes:
        exec_id = None
        if p.info.type_url.rsplit("/", 1)[-1] == "containerd.runc.v1.ProcessDetails":
            exec_id = oci_pb2.ProcessDetails.FromString(p.info.value).exec_id
        out.append(ProcessInfo(p.pid, exec_id))
    return tuple(out)


def json_any(type_url: str, value: Mapping[str, Any]) -> any_pb2.Any:
    """An OCI runtime-spec structure as containerd sends it: JSON bytes in an Any."""
    return any_pb2.Any(type_url=type_url, value=json.dumps(value).encode())


def runc_options(
    *,
    root: str = "",
    binary_name: str = "",
    systemd_cgroup: bool = False,
    shim_cgroup: str = "",
    io_uid: int = 0,
    io_gid: int = 0,
    no_pivot_root: bool = False,
    criu_path: str = "",
) -> any_pb2.Any:
    """Options for runc-family shims (containerd-shim-runc-v2): Create's ``options``.

    ``root`` is the OCI runtime's state root; the shim appends its namespace to it. Leave it
    empty and the shim uses /run/containerd/runc, which a containerd on the same host shares.
    """
    opts = oci_pb2.Options(
        root=root,
        binary_name=binary_name,
        systemd_cgroup=systemd_cgroup,
        shim_cgroup=shim_cgroup,
        io_uid=io_uid,
        io_gid=io_gid,
        no_pivot_root=no_pivot_root,
        criu_path=criu_path,
    )
    return any_pb2.Any(type_url=RUNC_OPTIONS_URL, value=opts.SerializeToString())


def runtime_options(
    *, config_path: str = "", type_url: str = "", config_body: bytes = b""
) -> any_pb2.Any:
    """Options for other shims, as containerd's CRI plugin sends them: Kata reads its
    configuration.toml from ``config_path``; gVisor's shim reads runsc.toml there (with
    ``type_url="io.containerd.runsc.v1.options"``)."""
    opts = runtimeoptions_pb2.Options(
        type_url=type_url, config_path=config_path, config_body=config_body
    )
    return any_pb2.Any(type_url=RUNTIME_OPTIONS_URL, value=opts.SerializeToString())


def mounts_proto(mounts: Sequence[Mount]) -> list[mount_pb2.Mount]:
    return [m.to_proto() for m in mounts]
