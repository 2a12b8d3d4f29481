"""containerd shim v2 runtimes (Kata, gVisor's shim, runwasi, containerd-shim-runc-v2).

The pieces a backend composes, bottom up:

* ``bootstrap``: shim binary lookup, the ``start`` and ``delete`` commands;
* ``shim``: :class:`ShimManager` starts or reconnects a task's shim (:class:`Shim`);
* ``task``: :class:`ShimClient`, the task API over ttrpc as typed async calls;
* ``records``: the frozen records those calls return, Any helpers (runc options);
* ``metrics``: the shim's cgroup metrics as :class:`cri_async.stats.CgroupStats`;
* ``events``: :class:`EventServer`, the TTRPC_ADDRESS endpoint shims publish to;
* ``stdio``: :class:`ProcessIO`, a process's stdio FIFOs.

and the backend built on them (a RuntimeClass handler, ``backend = "shimv2"``):

* ``settings``: a handler's settings from its config table (options for the shim);
* ``hub``: :class:`EventHub`, the one events endpoint of all shim handlers;
* ``tasks``/``taskset``: a container's task in memory, and the tasks of a handler;
* ``sessions``: ExecSync, streaming exec and attach;
* ``backend``: :class:`ShimBackend`, the OCIRuntime port.

See docs/shimv2.md.
"""

from .bootstrap import Bootstrap, ShimCommandError, ShimNotFound, binary_name, resolve_binary
from .events import Event, EventServer, Subscription, TaskExit, TaskOOM
from .records import (
    ExitInfo,
    Mount,
    ProcessInfo,
    ShimInfo,
    Stdio,
    TaskState,
    TaskStatus,
    runc_options,
    runtime_options,
)
from .shim import Shim, ShimGone, ShimManager
from .stdio import ProcessIO
from .task import ShimClient

__all__ = [
    "Bootstrap",
    "Event",
    "EventServer",
    "ExitInfo",
    "Mount",
    "ProcessIO",
    "ProcessInfo",
    "Shim",
    "ShimClient",
    "ShimCommandError",
    "ShimGone",
    "ShimInfo",
    "ShimManager",
    "ShimNotFound",
    "Stdio",
    "Subscription",
    "TaskExit",
    "TaskOOM",
    "TaskState",
    "TaskStatus",
    "binary_name",
    "resolve_binary",
    "runc_options",
    "runtime_options",
]
