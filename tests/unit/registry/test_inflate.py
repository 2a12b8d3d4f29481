"""The decompress/hash pipeline in front of the unpack (registry.inflate)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tests.unit.registry.layers import gz


def test_gunzip_reads_members_and_padding_like_gzip() -> None:
    import gzip

    from cri_async.registry.inflate import CHUNK, gunzip

    one = os.urandom(300_000)
    text = b"hello world " * 200_000  # compresses ~1000:1: output comes in bounded chunks
    for blob in (
        b"",
        gz(b""),
        gz(one),
        gz(one) + gz(text),
        gz(text) + b"\0" * 1000 + gz(b"tail") + b"\0" * 7,
        gz(b"") + gz(b"") + gz(b"x"),
    ):
        chunks = list(gunzip(io.BytesIO(blob)))
        assert b"".join(chunks) == gzip.decompress(blob)
        assert all(0 < len(c) <= CHUNK for c in chunks)


def test_gunzip_refuses_truncated_and_trailing_garbage() -> None:
    import zlib

    from cri_async.registry.inflate import gunzip

    blob = gz(os.urandom(100_000)) + gz(b"second")
    for cut in (1, 10, 50_000, len(blob) - 30, len(blob) - 1):
        with pytest.raises(EOFError):
            b"".join(gunzip(io.BytesIO(blob[:cut])))
    for bad in (blob + b"garbage", b"\0" + blob, blob[:20] + b"\xff" * 64 + blob[84:]):
        with pytest.raises(zlib.error):
            b"".join(gunzip(io.BytesIO(bad)))


def test_inflater_thread_stops_when_the_reader_gives_up(tmp_path: Path) -> None:
    import threading

    from cri_async.registry.inflate import CHUNK, Inflater

    path = tmp_path / "blob"
    path.write_bytes(gz(os.urandom(40 * CHUNK)))
    before = threading.active_count()
    with open(path, "rb") as fh:
        inflater = Inflater(fh, "gzip")
        assert len(inflater.read(100)) == 100  # the rest of the stream stays unread
        inflater.close()
    assert threading.active_count() == before


def test_inflater_hands_out_the_stream_in_order(tmp_path: Path) -> None:
    import hashlib

    from cri_async.registry.inflate import CHUNK, Inflater

    data = os.urandom(3 * CHUNK + 123)
    path = tmp_path / "blob"
    path.write_bytes(gz(data))
    with open(path, "rb") as fh:
        inflater = Inflater(fh, "gzip")
        try:
            got = inflater.read(10) + inflater.read(5000) + inflater.read(-1)
            assert inflater.read(100) == b""
        finally:
            inflater.close()
    assert got == data
    assert inflater.hash.hexdigest() == hashlib.sha256(data).hexdigest()
    path.write_bytes(gz(data)[:-50])
    with open(path, "rb") as fh:
        inflater = Inflater(fh, "gzip")
        try:
            with pytest.raises(EOFError):
                inflater.read(-1)
            assert inflater.read(1) == b""  # the error ends the stream
        finally:
            inflater.close()
