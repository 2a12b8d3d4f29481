"""ttrpc frames: header layout, round trips through any split, oversized frames skipped."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.ttrpc.framing import (
    HEADER_LENGTH,
    MAX_MESSAGE,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    OversizedFrame,
    encode_frame,
)

SMALL_MAX = 64

frames = st.builds(
    Frame,
    stream_id=st.integers(0, 2**32 - 1),
    type=st.integers(0, 255),
    flags=st.integers(0, 255),
    payload=st.binary(max_size=SMALL_MAX),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def test_header_layout_is_big_endian_length_stream_type_flags() -> None:
    raw = encode_frame(0x01020304, MessageType.RESPONSE, b"abc", flags=0x05)
    assert raw[:HEADER_LENGTH] == bytes([0, 0, 0, 3, 1, 2, 3, 4, 2, 5])
    assert raw[HEADER_LENGTH:] == b"abc"
    assert len(raw) == HEADER_LENGTH + 3


def test_constants_match_ttrpc() -> None:
    assert HEADER_LENGTH == 10
    assert MAX_MESSAGE == 4 * 1024 * 1024
    assert [int(t) for t in MessageType] == [1, 2, 3]


def test_encode_refuses_oversized_payload_and_bad_fields() -> None:
    encode_frame(1, MessageType.REQUEST, b"x" * SMALL_MAX, max_message=SMALL_MAX)
    with pytest.raises(FrameTooLarge, match="65 bytes"):
        encode_frame(1, MessageType.REQUEST, b"x" * (SMALL_MAX + 1), max_message=SMALL_MAX)
    with pytest.raises(ValueError, match="stream id"):
        encode_frame(2**32, MessageType.REQUEST, b"")
    with pytest.raises(ValueError, match="byte"):
        encode_frame(1, 256, b"")


@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_round_trip_through_arbitrary_splits(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(
        encode_frame(f.stream_id, f.type, f.payload, f.flags, max_message=SMALL_MAX) for f in sent
    )
    dec = FrameDecoder(max_message=SMALL_MAX)
    got: list[Frame | OversizedFrame] = []
    for piece in _split(wire, cuts):
        got += dec.feed(piece)
    assert got == sent
    assert dec.buffered == 0


@given(st.binary(max_size=300), st.lists(st.integers(0, 1000), max_size=8))
def test_decoding_is_independent_of_how_bytes_arrive(wire: bytes, cuts: list[int]) -> None:
    whole = FrameDecoder(max_message=SMALL_MAX)
    at_once = whole.feed(wire)
    pieces = FrameDecoder(max_message=SMALL_MAX)
    split: list[Frame | OversizedFrame] = []
    for piece in _split(wire, cuts):
        split += pieces.feed(piece)
    assert split == at_once
    assert pieces.buffered == whole.buffered


@given(
    st.integers(SMALL_MAX + 1, 10 * SMALL_MAX),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_oversized_frame_is_reported_and_skipped(length: int, cuts: list[int]) -> None:
    before = encode_frame(1, MessageType.REQUEST, b"first", max_message=SMALL_MAX)
    big = struct.pack(">IIBB", length, 3, MessageType.REQUEST, 0) + b"\xaa" * length
    after = encode_frame(5, MessageType.REQUEST, b"last", max_message=SMALL_MAX)
    dec = FrameDecoder(max_message=SMALL_MAX)
    got: list[Frame | OversizedFrame] = []
    for piece in _split(before + big + after, cuts):
        got += dec.feed(piece)
    assert got == [
        Frame(1, MessageType.REQUEST, 0, b"first"),
        OversizedFrame(3, MessageType.REQUEST, 0, length),
        Frame(5, MessageType.REQUEST, 0, b"last"),
    ]


def test_partial_header_and_payload_wait_for_more() -> None:
    raw = encode_frame(7, MessageType.DATA, b"hello", flags=1)
    dec = FrameDecoder()
    assert dec.feed(raw[:4]) == []
    assert dec.buffered == 4
    assert dec.feed(raw[4:12]) == []
    assert dec.feed(raw[12:]) == [Frame(7, 3, 1, b"hello")]
    assert dec.buffered == 0
