"""Bounded queues with an end, for the streaming adapters: ``put`` waits while full (that is
the back-pressure), ``close`` ends the queue without losing what is still in it."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ClosableQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> bool:
        """False (and the item dropped) once the queue is closed."""
        while len(self._items) >= self._maxsize and not self._closed:
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            return False
        self._items.append(item)
        self._changed.set()
        return True

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def get(self) -> T | None:
        """The next item; None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        item = self._items.popleft()
        self._changed.set()
        return item


class Inbox:
    """Bytes received on one channel, with an end; ``put`` waits while ``limit`` bytes
    are waiting to be read."""

    def __init__(self, limit: int = 256 * 1024) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._eof = False
        self._changed = asyncio.Event()

    async def put(self, data: bytes) -> None:
        while self._size >= self._limit and not self._eof:
            self._changed.clear()
            await self._changed.wait()
        if not self._eof:
            self._chunks.append(data)
            self._size += len(data)
            self._changed.set()

    def close(self) -> None:
        self._eof = True
        self._changed.set()

    async def read(self) -> bytes:
        """The next bytes; b"" once closed and drained."""
        while not self._chunks:
            if self._eof:
                return b""
            self._changed.clear()
            await self._changed.wait()
        data = self._chunks.popleft()
        self._size -= len(data)
        self._changed.set()
        return data
