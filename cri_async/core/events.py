"""Fan-out of container lifecycle events to GetContainerEvents subscribers.

Publishing never blocks: each subscriber has a bounded queue, and a subscriber whose queue
is full is dropped (its stream ends) rather than slowing the runtime down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cri_async.core.model import Container, Sandbox

log = logging.getLogger(__name__)


class EventType(enum.Enum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """``container_id`` is a sandbox id for sandbox lifecycle events, as in containerd."""

    container_id: str
    type: EventType
    created_at: int
    sandbox: Sandbox | None
    containers: tuple[Container, ...]


_CLOSED = object()


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.dropped = False

    def _offer(self, event: ContainerEvent) -> bool:
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            return False

    def _close(self, *, discard: bool = False) -> None:
        """End the stream: after its backlog, or at once (``discard``) for a subscriber
        that fell behind; it must resync with a list anyway."""
        while discard and not self._queue.empty():
            self._queue.get_nowait()
        while True:
            try:
                self._queue.put_nowait(_CLOSED)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def close(self) -> None:
        self._bus._unsubscribe(self)
        self._close()

    async def __aiter__(self) -> AsyncIterator[ContainerEvent]:
        try:
            while True:
                item = await self._queue.get()
                if item is _CLOSED:
                    return
                assert isinstance(item, ContainerEvent)
                yield item
        finally:
            self._bus._unsubscribe(self)


class EventBus:
    def __init__(self, queue_size: int = 1024) -> None:
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._closed = False
        self.dropped_total = 0  # subscribers dropped for falling behind (metrics)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def queue_size(self) -> int:
        return self._queue_size

    def queue_depths(self) -> list[int]:
        """Events queued per subscriber, read at metrics scrape time."""
        return [s._queue.qsize() for s in self._subs]

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._queue_size)
        if self._closed:
            sub._close()
        else:
            self._subs.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: ContainerEvent) -> None:
        for sub in list(self._subs):
            if not sub._offer(event):
                sub.dropped = True
                self.dropped_total += 1
                self._subs.discard(sub)
                sub._close(discard=True)
                log.warning(
                    "dropped a GetContainerEvents subscriber: %d events queued and unread",
                    self._queue_size,
                )

    def close(self) -> None:
        """End every subscription (server shutdown)."""
        self._closed = True
        for sub in list(self._subs):
            sub._close()
        self._subs.clear()
