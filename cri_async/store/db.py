"""SQLite state database: every change is committed (WAL, fsync) before the RPC returns.

All database work runs on one dedicated thread, so commits never block the event loop and
are applied in the order they were submitted. Reads are served from memory by the core;
the database is read only at startup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from cri_async import faults, files
from cri_async.core.errors import Unavailable
from cri_async.core.ports import Delete, Op, Put

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteStore:
    """One state database per server; an exclusive lock file keeps a second server out."""

    def __init__(self, path: Path, *, sync: str = "full") -> None:
        self.path = path
        self._sync = sync
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cri-state")
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    async def _run(self, fn: Callable[[], T], *, opening: bool = False) -> T:
        if self._conn is None and not opening:
            raise Unavailable("state database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Unavailable(
                f"state database {self.path} is in use by another cri-async process "
                f"(lock {lock_path})"
            ) from None
        self._lock_fd = fd
        # It holds every container's config, environment included: root only. SQLite
        # gives its -wal and -shm files the database file's mode.
        files.private_file(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'full' else 'NORMAL'}")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise Unavailable(
                f"state database {self.path} has schema {row[0]}, newer than this "
                f"cri-async understands ({SCHEMA_VERSION})"
            )
        self._conn = conn

    async def open(self) -> None:
        await self._run(self._open_sync, opening=True)

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._exec, _close)
        self._exec.shutdown(wait=True)

    async def load(self, kind: str) -> list[tuple[str, str]]:
        def _load() -> list[tuple[str, str]]:
            assert self._conn is not None
            cur = self._conn.execute("SELECT id, data FROM objects WHERE kind=?", (kind,))
            return [(str(i), str(d)) for i, d in cur.fetchall()]

        return await self._run(_load)

    async def apply(self, ops: Iterable[Op]) -> None:
        """Apply the operations atomically (one transaction, one fsync)."""

        def _apply() -> None:
            conn = self._conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    if isinstance(op, Put):
                        conn.execute(
                            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?)",
                            (op.kind, op.id, op.data),
                        )
                    else:
                        conn.execute("DELETE FROM objects WHERE kind=? AND id=?", (op.kind, op.id))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        faults.reached("commit")
        await self._run(_apply)
        faults.reached("committed")

    async def put(self, kind: str, id: str, data: str) -> None:
        await self.apply([Put(kind, id, data)])

    async def delete(self, kind: str, ids: Iterable[str]) -> None:
        await self.apply([Delete(kind, i) for i in ids])

    async def get_meta(self, key: str) -> str | None:
        def _get() -> str | None:
            assert self._conn is not None
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(_get)

    async def set_meta(self, key: str, value: str) -> None:
        def _set() -> None:
            assert self._conn is not None
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

        await self._run(_set)
