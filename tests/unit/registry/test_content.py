import hashlib
from pathlib import Path

import pytest

from cri_async.registry.content import ContentStore, DigestMismatch


def d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_write_verify_commit(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.open()
    data = b"x" * (3 << 20)  # spans several writer-thread batches
    w = cs.writer(d(data), len(data))
    for i in range(0, len(data), 1000):
        await w.write(data[i : i + 1000])
    assert not cs.has(d(data))  # invisible until committed
    path = await w.commit()
    assert path.read_bytes() == data and cs.has(d(data))
    assert cs.digests() == [d(data)] and not list(cs.ingest.iterdir())


async def test_mismatch_and_oversize_never_become_visible(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.open()
    w = cs.writer(d(b"good"), 4)
    await w.write(b"evil")
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        await w.commit()
    w.abort()
    w = cs.writer(d(b"good"), 4)
    with pytest.raises(DigestMismatch, match="more than the 4 bytes"):
        await w.write(b"good!")
    w.abort()
    w = cs.writer(d(b"good"), 4)
    await w.write(b"go")
    with pytest.raises(DigestMismatch, match="got 2 bytes"):
        await w.commit()
    w.abort()
    assert not cs.has(d(b"good")) and cs.digests() == [] and not list(cs.ingest.iterdir())


async def test_interrupted_ingest_is_swept_on_open(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.open()
    w = cs.writer(d(b"abc"), 3)
    await w.write(b"ab")
    await w.flush()  # a crash here leaves a partial file behind
    assert list(cs.ingest.iterdir())
    again = ContentStore(tmp_path)
    assert len(again.open()) == 1 and not list(again.ingest.iterdir())
    await again.put(d(b"abc"), b"abc")
    assert again.read(d(b"abc")) == b"abc"
    assert again.delete(d(b"abc")) == 3 and again.delete(d(b"abc")) == 0
