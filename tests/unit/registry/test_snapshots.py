"""Snapshots: a layer blob through decompression, unpack and the diff-id check into place."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.unit.registry.layers import MIXED_LAYER, gz, need_root


@pytest.fixture(autouse=True)
def _need_root() -> None:
    need_root()


def _store_unpack(tmp: Path, blob: bytes, diff_id: str, compression: str = "gzip") -> Any:
    from cri_async.registry.snapshots import SnapshotStore

    store = SnapshotStore(tmp / "snapshots")
    store.open()
    path = tmp / "blob"
    path.write_bytes(blob)
    return store._unpack_sync("sha256:" + "ab" * 32, diff_id, path, compression)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_snapshot_unpack_through_the_pipeline(tmp_path: Path, compression: str) -> None:
    import hashlib

    import zstandard

    tar = MIXED_LAYER + bytes(10240)  # padding after the end marker is in the diff id
    blob = {
        "gzip": gz(tar),
        "zstd": zstandard.ZstdCompressor().compress(tar),
        "none": tar,
    }[compression]
    info = _store_unpack(tmp_path, blob, "sha256:" + hashlib.sha256(tar).hexdigest(), compression)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert info.bytes == sum(m.size for m in tf if m.isreg())
    snap = tmp_path / "snapshots" / ("ab" * 32)
    assert (snap / "etc/passwd").read_bytes() == b"root:x:0:0\n" * 50
    assert not [p for p in (tmp_path / "snapshots").iterdir() if p.name.startswith("tmp-")]


def test_snapshot_unpack_refuses_corrupt_compressed_data(tmp_path: Path) -> None:
    import hashlib

    from cri_async.registry.snapshots import LayerError

    tar = MIXED_LAYER
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    blob = bytearray(gz(tar, level=1))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\xff" * 64  # broken deflate data mid-file
    with pytest.raises(LayerError, match="corrupt"):
        _store_unpack(tmp_path, bytes(blob), diff_id)
    with pytest.raises(LayerError, match="corrupt"):
        _store_unpack(tmp_path, gz(tar)[:-100], diff_id)  # truncated
    with pytest.raises(LayerError, match="does not match"):
        _store_unpack(tmp_path, gz(tar + b"\0" * 512), diff_id)  # more padding: other diff id
    assert not list((tmp_path / "snapshots").iterdir())
