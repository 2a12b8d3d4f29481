"""SPDY/3.1 frame codec: the dictionary, round trips under any split of the byte stream,
the Go reader's strictness on malformed frames, and one shared zlib context per direction."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri_async.streaming import spdy_frames as f
from cri_async.streaming.spdy_dictionary import SPDY3_DICTIONARY


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(SPDY3_DICTIONARY) == 1423
    assert zlib.adler32(SPDY3_DICTIONARY) == 0xE3C6A7C2
    assert (
        hashlib.sha256(SPDY3_DICTIONARY).hexdigest()
        == "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
values = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
)
header_sets = st.dictionaries(names, values, max_size=6).map(lambda d: tuple(d.items()))
stream_ids = st.integers(1, f.MAX_STREAM_ID)

frames = st.one_of(
    st.builds(
        f.SynStream,
        stream_ids,
        header_sets,
        fin=st.booleans(),
        unidirectional=st.booleans(),
        associated_id=st.integers(0, f.MAX_STREAM_ID),
        priority=st.integers(0, 7),
        slot=st.integers(0, 255),
    ),
    st.builds(f.SynReply, stream_ids, header_sets, fin=st.booleans()),
    st.builds(f.HeadersFrame, stream_ids, header_sets, fin=st.booleans()),
    st.builds(f.RstStream, stream_ids, st.integers(1, 11)),
    st.builds(
        f.Settings,
        st.lists(
            st.builds(f.Setting, st.integers(1, 8), st.integers(0, 2**32 - 1), st.integers(0, 3)),
            max_size=4,
        ).map(tuple),
        clear=st.booleans(),
    ),
    st.builds(f.Ping, st.integers(1, 2**32 - 1)),
    st.builds(f.GoAway, st.integers(0, f.MAX_STREAM_ID), st.integers(0, 2)),
    st.builds(f.WindowUpdate, st.integers(0, f.MAX_STREAM_ID), st.integers(1, f.MAX_WINDOW)),
    st.builds(f.Data, stream_ids, st.binary(max_size=300), fin=st.booleans()),
)


@settings(max_examples=300)
@given(st.lists(frames, max_size=12), st.data())
def test_round_trip_under_any_split(items: list[f.Frame], data: st.DataObject) -> None:
    enc = f.FrameEncoder()
    wire = b"".join(enc.encode(x) for x in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    dec = f.FrameDecoder()
    got: list[f.Frame] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += dec.feed(wire[prev:cut])
        prev = cut
    assert got == items


def test_header_block_layout_and_nul_joined_values() -> None:
    raw = f.encode_header_block((("StreamType", "error"), ("x", "a"), ("x", "b")))
    assert raw == (
        struct.pack(">I", 2)
        + struct.pack(">I", 10)
        + b"streamtype"
        + struct.pack(">I", 5)
        + b"error"
        + struct.pack(">I", 1)
        + b"x"
        + struct.pack(">I", 3)
        + b"a\x00b"
    )
    assert f.decode_header_block(raw) == (("streamtype", "error"), ("x", "a"), ("x", "b"))


def test_first_block_announces_the_dictionary_and_context_is_shared() -> None:
    enc = f.FrameEncoder()
    first = enc.encode(f.SynReply(1))
    second = enc.encode(f.SynReply(3))
    # control header (8) + stream id (4), then the zlib header naming the dictionary id
    assert first[12] == 0x78 and first[14:18] == bytes.fromhex("e3c6a7c2")
    assert first[-4:] == b"\x00\x00\xff\xff"  # sync flush
    # the second block continues the same stream: no zlib header again, and it cannot be
    # decoded by a fresh context
    assert second[12] != 0x78
    with pytest.raises(f.FrameError):
        f.FrameDecoder().feed(second)
    dec = f.FrameDecoder()
    assert dec.feed(first + second) == [f.SynReply(1), f.SynReply(3)]


def test_go_style_level9_block_decodes() -> None:
    # What a Go peer sends: zlib at level 9 with the dictionary, sync-flushed.
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, SPDY3_DICTIONARY)
    block = z.compress(f.encode_header_block((("streamtype", "stdout"),)))
    block += z.flush(zlib.Z_SYNC_FLUSH)
    assert block[:2] == b"\x78\xf9"
    payload = struct.pack(">IIBB", 3, 0, 0, 0) + block
    wire = struct.pack(">HHI", 0x8003, 1, len(payload)) + payload
    assert f.FrameDecoder().feed(wire) == [f.SynStream(3, (("streamtype", "stdout"),))]


def control(kind: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(payload)) + payload


@pytest.mark.parametrize(
    "wire",
    [
        control(6, b"\x00\x00\x00\x01\x00"),  # PING of length 5
        control(6, b"\x00\x00\x00\x01", flags=1),  # PING with flags
        control(7, b"\x00\x00\x00\x01"),  # GOAWAY of length 4
        control(9, b"\x00\x00\x00\x01\x00\x00\x00\x00"),  # WINDOW_UPDATE delta 0
        control(9, b"\x00\x00\x00\x01\x00\x00\x00\x01\x00"),  # WINDOW_UPDATE length 9
        control(3, b"\x00\x00\x00\x01\x00\x00\x00\x00"),  # RST status 0
        control(3, b"\x00\x00\x00\x00\x00\x00\x00\x05"),  # RST on stream 0
        control(4, b"\x00\x00\x00\x02" + b"\x00" * 8),  # SETTINGS count lies
        control(1, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00garbage"),  # bad zlib
        control(6, b"\x00\x00\x00\x01", version=2),  # SPDY/2
        b"\x00\x00\x00\x00\x00\x00\x00\x00",  # DATA on stream 0
    ],
)
def test_malformed_frames_are_frame_errors(wire: bytes) -> None:
    dec = f.FrameDecoder()
    with pytest.raises(f.FrameError):
        dec.feed(wire)
    with pytest.raises(f.FrameError):  # and the decoder stays dead
        dec.feed(f.FrameEncoder().encode(f.Ping(1)))


def test_unknown_control_type_is_skipped() -> None:
    wire = control(10, b"\x00" * 12) + f.FrameEncoder().encode(f.Ping(7))
    assert f.FrameDecoder().feed(wire) == [f.Ping(7)]


def test_header_bomb_is_refused() -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, SPDY3_DICTIONARY)
    big = f.encode_header_block((("x", "a" * (2 * f.MAX_HEADER_BLOCK)),))
    block = z.compress(big) + z.flush(zlib.Z_SYNC_FLUSH)
    assert len(block) < 4096
    with pytest.raises(f.FrameError, match="larger than"):
        f.FrameDecoder().feed(control(2, struct.pack(">I", 1) + block))


def test_duplicate_and_truncated_header_blocks() -> None:
    dup = struct.pack(">I", 2) + (struct.pack(">I", 1) + b"a" + struct.pack(">I", 0)) * 2
    with pytest.raises(f.FrameError, match="duplicate"):
        f.decode_header_block(dup)
    with pytest.raises(f.FrameError, match="truncated"):
        f.decode_header_block(struct.pack(">I", 1) + struct.pack(">I", 9) + b"abc")
    # uppercase names are accepted, lowercased (header names match case-insensitively)
    upper = struct.pack(">I", 1) + struct.pack(">I", 4) + b"Port" + struct.pack(">I", 2) + b"80"
    assert f.decode_header_block(upper) == (("port", "80"),)
    assert f.header_value((("port", "80"),), "PORT") == "80"
