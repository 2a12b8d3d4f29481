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
        self._pending: list[tuple[list[Op], asyncio.Future[None]]] = []
        self._committing = False

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

        if self._pending and not self._committing:
            self._flush()  # queued ahead of the close on the writer thread
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
        """Apply the operations atomically; returns once they are committed.

        Group commit: a batch goes to the writer thread at once when it is idle; the
        batches that arrive while it commits are committed together next, one transaction
        and one fsync for all, each under its own savepoint so a failing one fails alone."""
        if self._conn is None:
            raise Unavailable("state database is closed")
        faults.reached("commit")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((list(ops), done))
        if not self._committing:
            self._flush()
        await done
        faults.reached("committed")

    def _flush(self) -> None:
        """Hand the batches gathered so far to the writer thread as one group."""
        group, self._pending = self._pending, []
        if not group:
            return
        self._committing = True
        job = asyncio.get_running_loop().run_in_executor(
            self._exec, self._commit_group, [ops for ops, _ in group]
        )

        def settle(job: asyncio.Future[list[BaseException | None]]) -> None:
            self._committing = False
            if self._pending and self._conn is not None:
                self._flush()
            if job.cancelled() or job.exception() is not None:
                err = job.exception() if not job.cancelled() else Unavailable("commit cancelled")
                outcomes: list[BaseException | None] = [err] * len(group)
            else:
                outcomes = job.result()
            for (_, fut), outcome in zip(group, outcomes, strict=True):
                if fut.done():
                    continue
                if outcome is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(outcome)

        job.add_done_callback(settle)

    def _commit_group(self, group: list[list[Op]]) -> list[BaseException | None]:
        """In the writer thread: one transaction for the group; per batch, None or what
        made it fail (then only that batch is rolled back)."""
        conn = self._conn
        if conn is None:
            raise Unavailable("state database is closed")
        outcomes: list[BaseException | None] = []
        alone = len(group) == 1  # nothing to isolate it from: no savepoint
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ops in group:
                if alone:
                    self._write(conn, ops)
                    outcomes.append(None)
                    continue
                conn.execute("SAVEPOINT batch")
                try:
                    self._write(conn, ops)
                except Exception as e:
                    conn.execute("ROLLBACK TO batch")
                    outcomes.append(e)
                else:
                    outcomes.append(None)
                conn.execute("RELEASE batch")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _write(conn: sqlite3.Connection, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, Put):
                conn.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", (op.kind, op.id, op.data)
                )
            else:
                conn.execute("DELETE FROM objects WHERE kind=? AND id=?", (op.kind, op.id))

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
