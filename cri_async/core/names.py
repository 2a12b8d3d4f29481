"""Name reservation with in-flight de-duplication of creates.

kubelet retries a RunPodSandbox/CreateContainer whose deadline expired with the same name.
The first attempt keeps running (detached from the cancelled call); a retry that arrives
while it runs joins it, and a retry that arrives after it finished, when no caller has
received the id yet, gets that id. Any other reuse of a held name is ALREADY_EXISTS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from cri_async.core.errors import AlreadyExists


class NameIndex:
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._holders: dict[Hashable, str] = {}
        self._inflight: dict[Hashable, asyncio.Task[str]] = {}
        self._undelivered: dict[Hashable, str] = {}

    def holder(self, key: Hashable) -> str | None:
        return self._holders.get(key)

    def bind(self, key: Hashable, obj_id: str) -> None:
        """Record that ``obj_id`` holds ``key`` (used when loading state)."""
        self._holders[key] = obj_id

    def release(self, key: Hashable, obj_id: str) -> None:
        if self._holders.get(key) == obj_id:
            del self._holders[key]
            self._undelivered.pop(key, None)

    @property
    def inflight(self) -> list[asyncio.Task[str]]:
        return list(self._inflight.values())

    async def create(
        self, key: Hashable, display: str, factory: Callable[[], Awaitable[str]]
    ) -> str:
        """Run ``factory`` once per name; it must ``bind`` the name before returning."""
        task = self._inflight.get(key)
        if task is None:
            if key in self._undelivered:
                return self._undelivered.pop(key)
            holder = self._holders.get(key)
            if holder is not None:
                raise AlreadyExists(
                    f"{self._kind} name {display!r} is already in use by {self._kind} {holder}"
                )
            task = asyncio.ensure_future(factory())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._settled(key, t))
        result = await asyncio.shield(task)
        self._undelivered.pop(key, None)
        return result

    def _settled(self, key: Hashable, task: asyncio.Task[str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is None:
            # Until a caller resumes with it, the id counts as undelivered.
            self._undelivered[key] = task.result()
