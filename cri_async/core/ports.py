"""The ports of the runtime core: what it needs from OCI runtime backends, from the stats
source and from durable state. Adapters implement them (``backends/``, ``stats/``,
``store/``); the composition root (``server.py``) builds them complete and hands them over.

The core calls these with domain records only. Every method must be idempotent where it
says so, because kubelet retries and startup recovery call them again after a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cri_async.core.model import Container, Image, Resources, Sandbox
from cri_async.core.stats import ContainerSample, PodSample
from cri_async.core.streams import Session, Stdio


@dataclass(frozen=True, slots=True)
class HandlerFeatures:
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


@dataclass(frozen=True, slots=True)
class BackendStatus:
    ready: bool
    reason: str = ""
    message: str = ""
    features: HandlerFeatures = field(default_factory=HandlerFeatures)
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int
    finished_at: int  # unix ns
    reason: str = ""  # "OOMKilled" when the kernel killed it; the core fills the rest
    message: str = ""


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """What recovery finds for a container the database says was running, or created
    (a crash may have cut its StartContainer short after the process started)."""

    pid: int
    exit: ExitStatus | None  # None: not exited
    started: bool = True  # False: created and never started


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class StartError(Exception):
    """The container's process could not be started (bad binary, runtime refused...)."""


class OCIRuntime(Protocol):
    """A runtime handler's backend (one instance per configured handler)."""

    handler: str

    async def probe(self) -> BackendStatus:
        """Readiness and features; called at startup and for Status."""
        ...

    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        """Create the pod's namespaces/infra; returns the record with network and
        backend_info filled. Must leave nothing behind if it raises."""
        ...

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        """Release what a stopped pod no longer needs. Idempotent."""
        ...

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        """Remove everything create_sandbox made. Idempotent; unknown sandboxes are fine."""
        ...

    async def create_container(
        self,
        sandbox: Sandbox,
        container: Container,
        image: Image,
        *,
        pid_target: Container | None = None,
    ) -> Container:
        """Prepare the container (rootfs, spec, supervisor) without starting it.
        ``pid_target``: the running container whose PID namespace it joins (mode TARGET)."""
        ...

    async def start_container(self, container: Container) -> int:
        """Start the process; returns its pid. Raises StartError if it cannot start."""
        ...

    async def wait(self, container: Container) -> ExitStatus:
        """Complete when the container's process has exited."""
        ...

    async def kill(self, container: Container, signal: int) -> None:
        """Send a signal to the container's process; a no-op if it already exited."""
        ...

    async def recover(self, container: Container) -> ProcessStatus:
        """After a cri-async restart: is the process still running, or how did it end?
        Startup awaits this for every running container before it serves: answer from
        files where possible, not a subprocess per container. Also asked for created
        containers: was the process started (``ProcessStatus.started``)?"""
        ...

    async def delete_container(self, container: Container) -> None:
        """Remove the container's runtime state and rootfs. Idempotent."""
        ...

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        """Run ``cmd`` in the container and collect its output (each stream capped at
        ``limit`` bytes). On timeout the process is killed and DeadlineExceeded raised."""
        ...

    async def update_resources(self, container: Container, resources: Resources) -> None: ...

    async def reopen_log(self, container: Container) -> None: ...

    async def exec_session(self, container: Container, cmd: Sequence[str], stdio: Stdio) -> Session:
        """Start ``cmd`` in the running container for a streaming client (kubectl exec).
        Raises StreamStartError if it cannot start."""
        ...

    async def attach_session(self, container: Container, stdio: Stdio) -> Session:
        """Connect to the running container's stdio (output written from now on)."""
        ...

    async def port_forward(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``localhost:port`` inside the pod's network namespace (the
        host's for a host-network pod). Raises OSError when it cannot connect."""
        ...

    async def update_sandbox_resources(self, sandbox: Sandbox, resources: Resources) -> None:
        """Apply pod-level limits (the pod total plus overhead); Unimplemented where the
        handler has no pod-level resources."""
        ...

    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        """At startup: remove host objects (bundles, mounts, runtime state, pins...) that no
        known pod or container owns; one line per orphan removed. Runs beside RPCs: the
        sets are live (every id with a record, updated as records are written), so test
        membership right after listing what is on the host, never from an earlier copy."""
        ...

    async def close(self) -> None:
        """Stop background work at shutdown; containers keep running."""
        ...


class StatsSource(Protocol):
    """Container and pod resource usage, sampled from the host (cgroups, pod netns).

    The reads (``get``, ``containers``, ...) never wait; a stats RPC awaits ``fresh``
    first, which brings stale samples up to date without blocking the event loop."""

    def track(
        self,
        container_id: str,
        cgroups_path: str,
        sandbox_id: str,
        *,
        writable_layer: str | None = None,
    ) -> None: ...

    def track_pod(self, sandbox_id: str, cgroup_parent: str, netns_path: str | None) -> None: ...

    def untrack(self, id: str) -> None:
        """Forget a container, or a pod with its containers."""
        ...

    async def fresh(self) -> None:
        """Return once every tracked sample is recent (or a bounded wait for that ran
        out); concurrent callers share one refresh."""
        ...

    def get(self, container_id: str) -> ContainerSample | None: ...

    def get_pod(self, sandbox_id: str) -> PodSample | None: ...

    def containers(self, sandbox_id: str | None = None) -> list[ContainerSample]: ...

    def pods(self) -> list[PodSample]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Put:
    kind: str
    id: str
    data: str


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    id: str


Op = Put | Delete


class StateStore(Protocol):
    """Durable records by kind and id; every ``apply`` is committed before it returns."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self, kind: str) -> list[tuple[str, str]]: ...

    async def apply(self, ops: Iterable[Op]) -> None: ...

    async def put(self, kind: str, id: str, data: str) -> None: ...

    async def delete(self, kind: str, ids: Iterable[str]) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...
