"""Snapshots: a layer blob through decompression, unpack and the diff-id check into place."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.unit.registry.layers import MIXED_LAYER, f, gz, gzip_bomb, make_tar, need_root


@pytest.fixture(autouse=True)
def _need_root() -> None:
    need_root()


def _store_unpack(
    tmp: Path, blob: bytes, diff_id: str, compression: str = "gzip", **limits: Any
) -> Any:
    from cri_async.registry.snapshots import SnapshotStore

    store = SnapshotStore(tmp / "snapshots")
    store.open()
    path = tmp / "blob"
    path.write_bytes(blob)
    return store._unpack_sync("sha256:" + "ab" * 32, diff_id, path, compression, **limits)


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


# -- limits while unpacking --------------------------------------------------------------------


def test_gzip_bomb_stops_at_the_layer_limit_and_leaves_nothing(tmp_path: Path) -> None:
    from cri_async.registry.inflate import CHUNK
    from cri_async.registry.limits import KEY_LAYER_BYTES, LayerMeter, LimitExceeded

    blob, diff_id = gzip_bomb(256 << 20)
    assert len(blob) < 1 << 20
    meter = LayerMeter(diff_id, 8 << 20, None)
    with pytest.raises(LimitExceeded) as err:
        _store_unpack(tmp_path, blob, diff_id, meter=meter)
    assert err.value.key == KEY_LAYER_BYTES
    assert str(err.value) == (
        f"layer {diff_id} unpacks to more than 8.0 MiB (the limit images.max_layer_bytes"
        f" = {8 << 20})"
    )
    assert meter.bytes <= (8 << 20) + CHUNK  # stopped as soon as it went over
    assert not list((tmp_path / "snapshots").iterdir())


def test_image_budget_is_shared_by_its_layers(tmp_path: Path) -> None:
    from cri_async.registry.limits import KEY_IMAGE_BYTES, Budget, LayerMeter, LimitExceeded

    budget = Budget(10 << 20)
    blob, diff_id = gzip_bomb(6 << 20)
    info = _store_unpack(tmp_path, blob, diff_id, meter=LayerMeter(diff_id, 8 << 20, budget))
    assert info.size == len(gzip.decompress(blob))  # the uncompressed layer
    other, other_id = gzip_bomb(6 << 20, name="more")
    with pytest.raises(LimitExceeded) as err:
        _store_unpack(tmp_path / "b", other, other_id, meter=LayerMeter(other_id, 8 << 20, budget))
    assert err.value.key == KEY_IMAGE_BYTES and err.value.budget is budget
    assert "the limit images.max_image_bytes = 10485760" in str(err.value)
    assert not list((tmp_path / "b" / "snapshots").iterdir())


def test_entries_per_layer_limit(tmp_path: Path) -> None:
    import hashlib

    from cri_async.registry.limits import KEY_LAYER_ENTRIES, LimitExceeded

    tar = make_tar(*(f(f"f{i}") for i in range(100)))
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    assert _store_unpack(tmp_path, tar, diff_id, "none", max_entries=100).inodes == 100
    with pytest.raises(LimitExceeded) as err:
        _store_unpack(tmp_path / "b", tar, diff_id, "none", max_entries=99)
    assert err.value.key == KEY_LAYER_ENTRIES
    assert str(err.value) == (
        f"layer {diff_id} has more than 99 entries (the limit images.max_layer_entries = 99)"
    )
    assert not list((tmp_path / "b" / "snapshots").iterdir())
