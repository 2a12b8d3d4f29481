"""Typed in-memory tables of records, written through to the state database.

Every change is committed before the in-memory table changes, and both happen inside a
shielded task: a cancelled caller can neither half-apply a change nor leave memory and
disk disagreeing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from cri_async.core import serde
from cri_async.core.errors import InvalidArgument, NotFound
from cri_async.core.filters import resolve_id
from cri_async.core.model import Container, Phase, Sandbox
from cri_async.core.ports import Delete, Op, Put, StateStore
from cri_async.core.validate import shown


class _Record(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def phase(self) -> Phase: ...


R = TypeVar("R", Sandbox, Container)


class Table(Generic[R]):
    def __init__(self, kind: str, cls: type[R], store: StateStore) -> None:
        self.kind = kind
        self._cls: type[R] = cls
        self._store = store
        self._items: dict[str, R] = {}
        self._ids: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> list[R]:
        self._items = {
            i: serde.loads(self._cls, data) for i, data in await self._store.load(self.kind)
        }
        self._ids = set(self._items)
        return list(self._items.values())

    @property
    def ids(self) -> set[str]:
        """The ids of every record (any phase), as a live set: it changes as records are
        written. Startup's orphan sweep runs beside RPCs and takes host objects whose id is
        not in it (at that moment) for orphans; a create writes its record before it
        makes any host object, so nothing it makes is ever swept. Read, never modify."""
        return self._ids

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[R]:
        return iter(list(self._items.values()))

    def live(self) -> list[R]:
        return [r for r in self._items.values() if r.phase is Phase.LIVE]

    def find(self, id_or_prefix: str) -> R | None:
        """A live record by full id or unique prefix; None when there is none."""
        if not id_or_prefix:
            raise InvalidArgument(f"{self.kind} id must not be empty")
        rec = self._items.get(id_or_prefix)
        if rec is None:
            ids = resolve_id((r.id for r in self.live()), id_or_prefix)
            if len(ids) > 1:
                raise InvalidArgument(
                    f"{self.kind} id prefix {shown(id_or_prefix)} is ambiguous: matches "
                    f"{len(ids)} ids"
                )
            rec = self._items[ids[0]] if ids else None
        return rec if rec is not None and rec.phase is Phase.LIVE else None

    def match(self, id_or_prefix: str) -> R | None:
        """For list filters: like find(), but an ambiguous prefix matches nothing."""
        try:
            return self.find(id_or_prefix)
        except InvalidArgument:
            return None

    def get(self, id_or_prefix: str) -> R:
        rec = self.find(id_or_prefix)
        if rec is None:
            raise NotFound(f"{self.kind} {shown(id_or_prefix)} not found")
        return rec

    def peek(self, full_id: str) -> R | None:
        """Any record (also CREATING) by full id."""
        return self._items.get(full_id)

    def op_put(self, rec: R) -> Op:
        return Put(self.kind, rec.id, serde.dumps(rec))

    def op_delete(self, rec_id: str) -> Op:
        return Delete(self.kind, rec_id)

    async def _commit(self, ops: list[Op], apply: Callable[[], None]) -> None:
        async def run() -> None:
            await self._store.apply(ops)
            apply()

        await asyncio.shield(asyncio.ensure_future(run()))

    async def put(self, rec: R) -> R:
        def apply() -> None:
            self._items[rec.id] = rec
            self._ids.add(rec.id)

        await self._commit([self.op_put(rec)], apply)
        return rec

    async def update(self, rec_id: str, change: Callable[[R], R]) -> R:
        """Read-modify-write one record; the lock is held only across the commit."""
        lock = self._locks.setdefault(rec_id, asyncio.Lock())
        async with lock:
            cur = self._items.get(rec_id)
            if cur is None:
                raise NotFound(f"{self.kind} {rec_id!r} not found")
            return await self.put(change(cur))

    async def delete(self, rec_id: str) -> bool:
        existed = rec_id in self._items

        def apply() -> None:
            self._items.pop(rec_id, None)
            self._ids.discard(rec_id)
            self._locks.pop(rec_id, None)

        await self._commit([self.op_delete(rec_id)], apply)
        return existed
