"""``ShimClient``: the shim task API (containerd.task.v2 or v3) as typed async methods.

One client per ttrpc connection; a grouping shim serves several tasks on one connection, so
every method names its task by ``id`` (and ``exec_id`` for exec'd processes, "" = the
task's init). Answers come back as the records of :mod:`.records`; failures as
:class:`~cri_async.ttrpc.errors.TTRPCError` subclasses exactly as the shim sent them
(NOT_FOUND for an unknown task or exec, ALREADY_EXISTS for a taken exec id, UNKNOWN or
INTERNAL for OCI runtime failures), or ``ConnectionClosed`` when the shim went away.

Every call has a deadline (``timeout``). Wait is the exception that cannot have a short
one, so :meth:`ShimClient.wait` re-issues the call every ``wait_chunk`` seconds until the
process exits, the connection drops, or the caller cancels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from cri_async.api.containerd.task.v2 import shim_pb2 as pb
from cri_async.stats.cgroupstats import CgroupStats
from cri_async.ttrpc import Client
from cri_async.ttrpc.errors import ConnectionClosed, DeadlineExceededError

from .metrics import cgroup_stats
from .records import (
    PROCESS_SPEC_URL,
    RESOURCES_URL,
    ExitInfo,
    Mount,
    ProcessInfo,
    ShimInfo,
    Stdio,
    TaskState,
    exit_info,
    json_any,
    mounts_proto,
    process_infos,
    task_state,
)

__all__ = ["NAMESPACE_METADATA", "TASK_SERVICES", "ShimClient"]

M = TypeVar("M", bound=Message)

# The ttrpc service name per task API version (the start bootstrap says which).
TASK_SERVICES = {2: "containerd.task.v2.Task", 3: "containerd.task.v3.Task"}
# containerd sends its namespace on every call under this metadata key.
NAMESPACE_METADATA = "containerd-namespace-ttrpc"

NO_STDIO = Stdio()
DEFAULT_TIMEOUT = 30.0
DEFAULT_WAIT_CHUNK = 3600.0


class ShimClient:
    """Typed task API over one ttrpc connection to a shim."""

    def __init__(
        self,
        conn: Client,
        *,
        namespace: str,
        version: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        wait_chunk: float = DEFAULT_WAIT_CHUNK,
    ) -> None:
        if version not in TASK_SERVICES:
            raise ValueError(f"unsupported task API version {version}")
        self.conn = conn
        self.namespace = namespace
        self.version = version
        self.timeout = timeout
        self.wait_chunk = wait_chunk
        self._service = TASK_SERVICES[version]
        self._metadata = ((NAMESPACE_METADATA, namespace),)

    @property
    def closed(self) -> bool:
        return self.conn.closed

    async def close(self) -> None:
        """Drop the connection (the shim and its tasks keep running)."""
        await self.conn.close()

    async def _call(
        self, method: str, req: Message, resp: type[M], timeout: float | None = None
    ) -> M:
        return await self.conn.call(
            self._service,
            method,
            req,
            resp,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )

    async def create(
        self,
        id: str,
        bundle: str,
        *,
        stdio: Stdio = NO_STDIO,
        rootfs: Sequence[Mount] = (),
        options: any_pb2.Any | None = None,
        checkpoint: str = "",
        timeout: float | None = None,
    ) -> int:
        """Create the task from ``bundle``; returns its init pid (created, not started)."""
        req = pb.CreateTaskRequest(
            id=id,
            bundle=bundle,
            rootfs=mounts_proto(rootfs),
            terminal=stdio.terminal,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            checkpoint=checkpoint,
            options=options,
        )
        return (await self._call("Create", req, pb.CreateTaskResponse, timeout)).pid

    async def start(self, id: str, exec_id: str = "") -> int:
        req = pb.StartRequest(id=id, exec_id=exec_id)
        return (await self._call("Start", req, pb.StartResponse)).pid

    async def delete(self, id: str, exec_id: str = "") -> ExitInfo:
        """Delete an exited (or never started) process; the task itself for ``exec_id=""``."""
        req = pb.DeleteRequest(id=id, exec_id=exec_id)
        return exit_info(await self._call("Delete", req, pb.DeleteResponse))

    async def pids(self, id: str) -> tuple[ProcessInfo, ...]:
        return process_infos(await self._call("Pids", pb.PidsRequest(id=id), pb.PidsResponse))

    async def pause(self, id: str) -> None:
        await self._call("Pause", pb.PauseRequest(id=id), empty_pb2.Empty)

    async def resume(self, id: str) -> None:
        await self._call("Resume", pb.ResumeRequest(id=id), empty_pb2.Empty)

    async def kill(self, id: str, signal: int, *, exec_id: str = "", all: bool = False) -> None:
        """Send ``signal``; ``all`` reaches every process of the task, not only its init."""
        req = pb.KillRequest(id=id, exec_id=exec_id, signal=signal, all=all)
        await self._call("Kill", req, empty_pb2.Empty)

    async def exec(
        self, id: str, exec_id: str, process: Mapping[str, Any], *, stdio: Stdio = NO_STDIO
    ) -> None:
        """Add exec ``exec_id`` running the OCI ``process`` (runtime-spec Process JSON);
        start it with :meth:`start`."""
        req = pb.ExecProcessRequest(
            id=id,
            exec_id=exec_id,
            terminal=stdio.terminal,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            spec=json_any(PROCESS_SPEC_URL, process),
        )
        await self._call("Exec", req, empty_pb2.Empty)

    async def resize_pty(self, id: str, width: int, height: int, *, exec_id: str = "") -> None:
        req = pb.ResizePtyRequest(id=id, exec_id=exec_id, width=width, height=height)
        await self._call("ResizePty", req, empty_pb2.Empty)

    async def close_io(self, id: str, *, exec_id: str = "", stdin: bool = True) -> None:
        req = pb.CloseIORequest(id=id, exec_id=exec_id, stdin=stdin)
        await self._call("CloseIO", req, empty_pb2.Empty)

    async def update(
        self,
        id: str,
        resources: Mapping[str, Any],
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Apply OCI ``LinuxResources`` (runtime-spec JSON) to the running task."""
        req = pb.UpdateTaskRequest(
            id=id,
            resources=json_any(RESOURCES_URL, resources),
            annotations=dict(annotations or {}),
        )
        await self._call("Update", req, empty_pb2.Empty)

    async def wait(self, id: str, exec_id: str = "") -> ExitInfo:
        """Block until the process exits; its exit status is authoritative.

        The pid comes from State, asked first as containerd does (Wait's answer has none);
        an unknown task or exec raises NOT_FOUND right away.
        """
        pid = (await self.state(id, exec_id)).pid
        req = pb.WaitRequest(id=id, exec_id=exec_id)
        while True:
            try:
                resp = await self._call("Wait", req, pb.WaitResponse, self.wait_chunk)
            except DeadlineExceededError:
                continue  # only this chunk's deadline; a dropped connection raises instead
            return exit_info(resp, pid)

    async def stats(self, id: str) -> CgroupStats:
        """The task's cgroup numbers, decoded from the shim's metrics."""
        return cgroup_stats(await self.stats_any(id))

    async def stats_any(self, id: str) -> any_pb2.Any:
        """Stats as the shim sent them (type URL names the metrics message)."""
        return (await self._call("Stats", pb.StatsRequest(id=id), pb.StatsResponse)).stats

    async def connect(self, id: str) -> ShimInfo:
        resp = await self._call("Connect", pb.ConnectRequest(id=id), pb.ConnectResponse)
        return ShimInfo(resp.shim_pid, resp.task_pid, resp.version)

    async def shutdown(self, id: str, *, now: bool = False) -> None:
        """Ask the shim to exit. A shim still serving other tasks ignores it; one that exits
        may close the connection before answering, which counts as done."""
        with contextlib.suppress(ConnectionClosed):
            await self._call("Shutdown", pb.ShutdownRequest(id=id, now=now), empty_pb2.Empty)

    async def state(self, id: str, exec_id: str = "") -> TaskState:
        req = pb.StateRequest(id=id, exec_id=exec_id)
        return task_state(await self._call("State", req, pb.StateResponse))
