"""What the pod and container managers share: tables, store, backends, events, tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cri_async.core.errors import FailedPrecondition, InvalidArgument
from cri_async.core.events import ContainerEvent, EventBus, EventType
from cri_async.core.images import ImageStore
from cri_async.core.model import Container, Sandbox
from cri_async.core.names import NameIndex
from cri_async.core.ports import OCIRuntime, StateStore, StatsSource
from cri_async.core.tables import Table

log = logging.getLogger("cri_async.core")
T = TypeVar("T")


def now_ns() -> int:
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Limits:
    cleanup_timeout: float = 30.0  # each rollback/cleanup step, shielded
    kill_timeout: float = 10.0  # how long to wait for an exit after SIGKILL
    exec_output_limit: int = 16 * 1024 * 1024


@dataclass
class Context:
    store: StateStore
    backends: dict[str, OCIRuntime]
    default_handler: str
    images: ImageStore
    events: EventBus
    sandboxes: Table[Sandbox]
    containers: Table[Container]
    sandbox_names: NameIndex = field(default_factory=lambda: NameIndex("pod sandbox"))
    container_names: NameIndex = field(default_factory=lambda: NameIndex("container"))
    limits: Limits = field(default_factory=Limits)
    stats: StatsSource | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _single: dict[tuple[str, str], asyncio.Task[Any]] = field(default_factory=dict)

    def backend(self, handler: str) -> OCIRuntime:
        name = handler or self.default_handler
        try:
            return self.backends[name]
        except KeyError:
            known = ", ".join(repr(h) for h in sorted(self.backends))
            raise InvalidArgument(
                f"runtime handler {handler!r} is not configured (configured: {known})"
            ) from None

    def backend_for(self, sandbox: Sandbox) -> OCIRuntime:
        try:
            return self.backend(sandbox.runtime_handler)
        except InvalidArgument as e:
            raise FailedPrecondition(str(e)) from None

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def single_flight(self, op: str, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Concurrent calls of ``op`` on ``key`` share one run; it is not cancelled with
        any one caller (kubelet retries stop/remove calls it gave up on)."""
        task = self._single.get((op, key))
        if task is None:

            async def run() -> T:
                try:
                    return await fn()
                finally:
                    self._single.pop((op, key), None)

            task = self.spawn(run(), name=f"{op}-{key[:12]}")
            self._single[(op, key)] = task
        result: T = await asyncio.shield(task)
        return result

    async def cleanup(self, what: str, fn: Callable[[], Awaitable[object]]) -> None:
        """Run one cleanup step shielded from cancellation, bounded, logging failures."""

        async def bounded() -> None:
            try:
                await asyncio.wait_for(fn(), self.limits.cleanup_timeout)
            except Exception:
                log.exception("cleanup failed: %s", what)

        # A cancelled caller sees its cancellation; the cleanup itself goes on.
        await asyncio.shield(self.spawn(bounded(), name=f"cleanup {what}"))

    def track(self, c: Container) -> None:
        """Sample a container's cgroup if its backend runs it in one."""
        path = c.backend_info.get("cgroupsPath")
        if self.stats is not None and path:
            self.stats.track(
                c.id, path, c.sandbox_id, writable_layer=c.backend_info.get("writableLayer")
            )

    def track_pod(self, s: Sandbox) -> None:
        parent = s.backend_info.get("cgroupParent")
        if self.stats is not None and parent:
            self.stats.track_pod(s.id, parent, s.backend_info.get("netns") or None)

    def untrack(self, obj_id: str) -> None:
        if self.stats is not None:
            self.stats.untrack(obj_id)

    def sandbox_containers(self, sandbox_id: str) -> list[Container]:
        return [c for c in self.containers.live() if c.sandbox_id == sandbox_id]

    def publish(self, obj_id: str, kind: EventType, sandbox: Sandbox | None) -> None:
        sb_containers = tuple(self.sandbox_containers(sandbox.id)) if sandbox else ()
        self.events.publish(ContainerEvent(obj_id, kind, now_ns(), sandbox, sb_containers))
