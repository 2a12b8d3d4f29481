"""The tar stream reader: headers decoded exactly as tarfile decodes them, fast path or not."""

from __future__ import annotations

import io
import os
import struct
import tarfile
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cri_async.registry.tarstream import TarReader, UnsafeLayer, plain_header
from tests.unit.registry.layers import d, f, hard, sym

HEADER_FIELDS = (
    "name",
    "type",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime",
    "chksum",
    "linkname",
    "devmajor",
    "devminor",
    "pax_headers",
    "sparse",
    "offset",
    "offset_data",
)


def _first_member_by_tarfile(data: bytes) -> Any:
    try:
        with tarfile.open(
            fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tf:
            ti = tf.next()
            offset = tf.offset
    except (tarfile.TarError, EOFError, ValueError, OverflowError):
        return "error"
    if ti is None:
        return None
    return (*(getattr(ti, a) for a in HEADER_FIELDS), offset)


def _first_member_by_reader(data: bytes) -> Any:
    r = TarReader(io.BytesIO(data))
    try:
        ti = r.next()
    except UnsafeLayer:
        return "error"
    if ti is None:
        return None
    return (*(getattr(ti, a) for a in HEADER_FIELDS), r.offset)


HEADER_TYPES = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
        b"x",
        b"g",
        b"L",
        b"S",
        b"V",
    ]
)
# Numeric fields and the type flag, where header spellings differ between tar writers.
NUMERIC_AT = st.one_of(st.integers(100, 156), st.integers(329, 344))
SPELLING = st.sampled_from(list(b" \0\t01234567 89+-_xo\x1c\x80\xff/"))


@settings(max_examples=400, deadline=None)
@given(
    name=st.text(alphabet="ab/é.", max_size=130),
    kind=HEADER_TYPES,
    numbers=st.tuples(*(st.integers(0, 8**7 - 1) for _ in range(5))),
    size=st.integers(0, 3000),
    linkname=st.text(alphabet="ab/é", max_size=20),
    fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]),
    edits=st.lists(st.tuples(NUMERIC_AT | st.integers(0, 511), SPELLING), max_size=4),
    fix=st.sampled_from(["no", "unsigned", "signed"]),
)
@example(  # a name needing the ustar prefix field, a V7 directory
    name="p" * 120 + "/dir/",
    kind=tarfile.AREGTYPE,
    numbers=(0o755, 0, 0, 1, 2),
    size=0,
    linkname="",
    fmt=tarfile.USTAR_FORMAT,
    edits=[],
    fix="no",
)
def test_header_decoding_matches_tarfile(
    name: str,
    kind: bytes,
    numbers: tuple[int, ...],
    size: int,
    linkname: str,
    fmt: Any,
    edits: list[tuple[int, int]],
    fix: str,
) -> None:
    """Whatever the header says, the reader's member is tarfile's (or both refuse it)."""
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode, ti.uid, ti.gid, ti.devmajor, ti.devminor = numbers
    ti.size, ti.mtime, ti.linkname = size, numbers[4], linkname
    try:
        block = bytearray(ti.tobuf(fmt, "utf-8", "surrogateescape")[-512:])
    except ValueError:
        return  # not representable in this format
    for pos, value in edits:
        block[pos] = value
    if fix != "no":
        block[148:156] = b" " * 8
        total = sum(block) if fix == "unsigned" else sum(struct.unpack("512b", block))
        block[148:156] = b"%06o\0 " % (total & 0o777777)
    data = bytes(block) + os.urandom(size) + bytes(3072)
    assert _first_member_by_reader(data) == _first_member_by_tarfile(data)


def test_plain_headers_take_the_fast_path() -> None:
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for member, _ in (f("usr/bin/x", b"12"), d("usr/"), sym("l", "t"), hard("h", "x")):
            block = member.tobuf(fmt, "utf-8", "surrogateescape")
            assert len(block) == 512
            ti = plain_header(block, 0)
            assert ti is not None and ti.name == member.name.rstrip("/")
    dense = tarfile.TarInfo("\xff" * 99)  # > 65521 in the checksum: summed exactly
    dense.type, dense.linkname = tarfile.SYMTYPE, "\xfe" * 99
    dense.uname = dense.gname = "\xff" * 31
    block = dense.tobuf(tarfile.GNU_FORMAT, "latin-1", "strict")
    assert sum(block) > 65521
    ti = plain_header(block, 0)
    assert ti is not None and ti.name == "\udcff" * 99 and ti.linkname == "\udcfe" * 99
    block = block[:148] + b"%06o\0 " % (int(block[148:154], 8) + 65521) + block[156:]
    assert plain_header(block, 0) is None  # the same residue mod 65521 is not enough
