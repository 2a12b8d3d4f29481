import asyncio
import sqlite3
from pathlib import Path

import pytest

from cri_async.core.errors import Unavailable
from cri_async.core.ports import Delete, Put
from cri_async.store.db import SQLiteStore


async def test_apply_is_atomic_and_durable(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "state.db")
    await db.open()
    await db.apply([Put("k", "a", "1"), Put("k", "b", "2")])
    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure mid-transaction
        await db.apply([Put("k", "c", "3"), Put("k", None, "x")])  # type: ignore[arg-type]
    await db.apply([Delete("k", "a")])
    await db.set_meta("pod_cidr", "10.0.0.0/16")
    await db.close()

    again = SQLiteStore(tmp_path / "state.db")
    await again.open()
    assert sorted(await again.load("k")) == [("b", "2")]  # "c" rolled back with the bad row
    assert await again.get_meta("pod_cidr") == "10.0.0.0/16"
    await again.close()


async def test_second_store_on_same_db_is_refused(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "state.db")
    await first.open()
    second = SQLiteStore(tmp_path / "state.db")
    with pytest.raises(Unavailable, match="in use by another cri-async"):
        await second.open()
    await second.close()
    await first.close()
    # The lock goes with its holder: no stale lock after close (or a crash).
    third = SQLiteStore(tmp_path / "state.db")
    await third.open()
    await third.close()


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "state.db")
    await db.open()
    await db.close()
    with pytest.raises(Unavailable):
        await db.load("k")


async def test_concurrent_batches_commit_together_and_fail_alone(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "state.db")
    await db.open()
    good = [db.put("pod", f"p{i}", f"data{i}") for i in range(50)]
    bad = db.apply([Put("pod", "x", "kept?"), Put("pod", "y", None)])  # type: ignore[arg-type]
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert results[:50] == [None] * 50
    assert isinstance(results[50], sqlite3.IntegrityError)
    await db.close()
    again = SQLiteStore(tmp_path / "state.db")
    await again.open()
    rows = dict(await again.load("pod"))
    assert rows == {f"p{i}": f"data{i}" for i in range(50)}  # the failed batch left nothing
    await again.close()
