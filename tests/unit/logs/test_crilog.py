"""Tests for cri_async.logs.crilog: the CRI log line format, splitting, parsing, capture."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cri_async.logs.crilog import (
    DEFAULT_MAX_LINE,
    EXEC_SYNC_OUTPUT_LIMIT,
    MAX_TIMESTAMP_NS,
    MIN_TIMESTAMP_NS,
    LineSplitter,
    LogRecord,
    OutputCapture,
    ParseError,
    Stream,
    cap_output,
    encode_record,
    format_timestamp,
    join_records,
    parse_line,
    parse_lines,
    parse_timestamp,
)

NS = 1_000_000_000
# 2026-11-27T04:44:47.617189868Z, computed independently of the module.
T0 = int(datetime(2026, 11, 27, 4, 44, 47, tzinfo=UTC).timestamp()) * NS + 617189868
T0_Z = b"2026-11-27T04:44:47.617189868Z"
T0_OFF = b"2026-11-27T04:44:47.617189868+00:00"

OUT = Stream.STDOUT
ERR = Stream.STDERR


def rec(content: bytes, *, stream: Stream = OUT, partial: bool = False, ts: int = T0) -> LogRecord:
    return LogRecord(timestamp_ns=ts, stream=stream, partial=partial, content=content)


def split_all(data_chunks: list[bytes], max_line: int, stream: Stream = OUT) -> list[LogRecord]:
    sp = LineSplitter(stream, max_line)
    out: list[LogRecord] = []
    for i, chunk in enumerate(data_chunks):
        out += sp.feed(chunk, T0 + i)
    out += sp.flush(T0 + len(data_chunks))
    assert sp.pending == 0
    return out


def shape(records: list[LogRecord]) -> list[tuple[Stream, bool, bytes]]:
    return [(r.stream, r.partial, r.content) for r in records]


# ---------------------------------------------------------------------------------------------
# Timestamps


def test_format_timestamp_fixed_width_utc() -> None:
    assert format_timestamp(T0) == T0_Z
    assert format_timestamp(0) == b"1970-01-01T00:00:00.000000000Z"
    assert format_timestamp(T0 - 617189868) == b"2026-11-27T04:44:47.000000000Z"
    assert format_timestamp(-1) == b"1969-12-31T23:59:59.999999999Z"
    assert format_timestamp(MIN_TIMESTAMP_NS) == b"0001-01-01T00:00:00.000000000Z"
    assert format_timestamp(MAX_TIMESTAMP_NS) == b"9999-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize("ns", [MIN_TIMESTAMP_NS - 1, MAX_TIMESTAMP_NS + 1])
def test_format_timestamp_out_of_range(ns: int) -> None:
    with pytest.raises(ValueError, match="outside years"):
        format_timestamp(ns)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (T0_Z, T0),
        (T0_OFF, T0),  # conmon style
        (b"2026-11-27T04:44:47.617189868-00:00", T0),
        (b"2026-11-27T06:44:47.617189868+02:00", T0),
        (b"2026-11-26T23:14:47.617189868-05:30", T0),
        (b"2026-11-27T04:44:47.6171898Z", T0 - 68),  # containerd RFC3339Nano trims zeros
        (b"2026-11-27T04:44:47.6Z", T0 - 17189868),
        (b"2026-11-27T04:44:47Z", T0 - 617189868),  # RFC3339Nano on a whole second
        (b"2026-11-27T04:44:47.61718986899999Z", T0),  # past 9 digits: truncated, as Go does
        (b"2024-02-29T00:00:00Z", int(datetime(2024, 2, 29, tzinfo=UTC).timestamp()) * NS),
    ],
)
def test_parse_timestamp_variants(raw: bytes, expected: int) -> None:
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "malformed timestamp"),
        (b"stdout", "malformed timestamp"),
        (b"2026-11-27", "malformed timestamp"),
        (b"2026-11-27t04:44:47Z", "malformed timestamp"),
        (b"2026-11-27T04:44:47z", "malformed timestamp"),
        (b"2026-11-27T04:44:47.Z", "malformed timestamp"),
        (b"2026-11-27T04:44:47", "malformed timestamp"),  # no zone
        (b"2026-11-27T04:44:47+0000", "malformed timestamp"),
        (b"26-11-27T04:44:47Z", "malformed timestamp"),
        (b"2026-11-27T04:44:47.617189868Z ", "malformed timestamp"),
        (b"2026-13-01T00:00:00Z", "month must be in 1..12"),
        (b"2025-02-29T00:00:00Z", "day is out of range"),
        (b"2026-11-27T24:00:00Z", "hour must be in 0..23"),
        (b"2026-11-27T04:60:00Z", "minute must be in 0..59"),
        (b"2026-11-27T04:44:60Z", "second must be in 0..59"),
        (b"2026-11-27T04:44:47+24:00", "zone offset out of range"),
        (b"2026-11-27T04:44:47+01:60", "zone offset out of range"),
        (b"0000-01-01T00:00:00Z", "year 0 is out of range"),
        (b"0001-01-01T00:00:00+00:01", "outside years 0001..9999"),
    ],
)
def test_parse_timestamp_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_timestamp(raw)


timestamps = st.integers(min_value=MIN_TIMESTAMP_NS, max_value=MAX_TIMESTAMP_NS)


@given(timestamps)
def test_timestamp_roundtrip(ns: int) -> None:
    raw = format_timestamp(ns)
    assert len(raw) == len(T0_Z)
    assert parse_timestamp(raw) == ns


def go_rfc3339nano(local_ns: int, zone: bytes) -> bytes:
    """What Go's time.RFC3339Nano would print for a wall-clock time in some zone."""
    fixed = format_timestamp(local_ns)[:-1]  # drop the Z
    whole, frac = fixed.split(b".")
    frac = frac.rstrip(b"0")
    return whole + (b"." + frac if frac else b"") + zone


@given(timestamps, st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
def test_timestamp_offsets_and_trimmed_fractions(ns: int, offset_min: int) -> None:
    local = ns + offset_min * 60 * NS
    assume(MIN_TIMESTAMP_NS <= local <= MAX_TIMESTAMP_NS)
    sign = b"-" if offset_min < 0 else b"+"
    zone = sign + b"%02d:%02d" % divmod(abs(offset_min), 60)
    assert parse_timestamp(go_rfc3339nano(local, zone)) == ns
    assert parse_timestamp(go_rfc3339nano(ns, b"Z")) == ns


# ---------------------------------------------------------------------------------------------
# Encoding and parsing single lines


def test_encode_record_examples() -> None:
    assert encode_record(rec(b"out1")) == T0_Z + b" stdout F out1\n"
    assert encode_record(rec(b"err1", stream=ERR)) == T0_Z + b" stderr F err1\n"
    assert encode_record(rec(b"abc", partial=True)) == T0_Z + b" stdout P abc\n"
    assert encode_record(rec(b"")) == T0_Z + b" stdout F \n"


def test_encode_record_rejects_newline_in_content() -> None:
    with pytest.raises(ValueError, match="newline"):
        encode_record(rec(b"a\nb"))


@pytest.mark.parametrize("ts", [T0_Z, T0_OFF])
def test_parse_line_examples(ts: bytes) -> None:
    assert parse_line(ts + b" stdout F out1\n") == rec(b"out1")
    assert parse_line(ts + b" stderr F err1\n") == rec(b"err1", stream=ERR)
    assert parse_line(ts + b" stdout P abc\n") == rec(b"abc", partial=True)
    # Without the trailing newline too (last line of a file being written).
    assert parse_line(ts + b" stdout F out1") == rec(b"out1")


def test_parse_line_empty_content() -> None:
    assert parse_line(T0_Z + b" stdout F \n") == rec(b"")
    assert parse_line(T0_Z + b" stdout F ") == rec(b"")
    assert parse_line(T0_Z + b" stderr P \n") == rec(b"", stream=ERR, partial=True)


def test_parse_line_content_keeps_spaces_and_control_bytes() -> None:
    line = T0_Z + b" stdout F  two  spaces F P stderr \r\x00\xff\r\n"
    assert parse_line(line).content == b" two  spaces F P stderr \r\x00\xff\r"


def test_parse_line_tty_carriage_returns_stay_in_content() -> None:
    assert parse_line(T0_Z + b" stdout F progress 10%\rprogress 20%\r\n") == rec(
        b"progress 10%\rprogress 20%\r"
    )


@pytest.mark.parametrize(
    ("tag", "partial"),
    [(b"F:foo", False), (b"P:foo", True), (b"F:x:y", False), (b"P:", True), (b"F:", False)],
)
def test_parse_line_tag_suffixes(tag: bytes, partial: bool) -> None:
    assert parse_line(T0_Z + b" stdout " + tag + b" data\n") == rec(b"data", partial=partial)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "empty line"),
        (b"\n", "empty line"),
        (b"garbage", "timestamp not found"),
        (b"stdout F out1\n", "malformed timestamp b'stdout'"),
        (b"04:44:47 stdout F out1\n", "malformed timestamp"),
        (T0_Z, "timestamp not found"),
        (T0_Z + b"\n", "timestamp not found"),
        (T0_Z + b" stdout", "stream type not found"),
        (T0_Z + b" stdout\n", "stream type not found"),
        (T0_Z + b" stdin F x\n", "unexpected stream type b'stdin'"),
        (T0_Z + b" STDOUT F x\n", "unexpected stream type b'STDOUT'"),
        (T0_Z + b"  stdout F x\n", "unexpected stream type b''"),
        (T0_Z + b" stdout F", "log tag not found"),
        (T0_Z + b" stdout F\n", "log tag not found"),
        (T0_Z + b" stdout X out1\n", "unexpected log tag b'X'"),
        (T0_Z + b" stdout f out1\n", "unexpected log tag b'f'"),
        (T0_Z + b" stdout FULL out1\n", "unexpected log tag b'FULL'"),
        (T0_Z + b" stdout :F out1\n", "unexpected log tag b':F'"),
        (T0_Z + b" stdout  out1\n", "unexpected log tag b''"),
        (T0_Z + b" stdout F a\nb\n", "embedded newline"),
    ],
)
def test_parse_line_malformed(line: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_line(line)


def test_parse_error_is_value_error_and_previews_long_lines() -> None:
    with pytest.raises(ValueError, match=r"\(100\d bytes\)") as info:
        parse_line(b"x" * 1000 + b" stdout F y")
    assert isinstance(info.value, ParseError)
    assert len(str(info.value)) < 300


def content_without_newline() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"\r"))


records = st.builds(
    LogRecord,
    timestamp_ns=timestamps,
    stream=st.sampled_from(Stream),
    partial=st.booleans(),
    content=content_without_newline(),
)


@given(records)
def test_record_roundtrip(r: LogRecord) -> None:
    line = encode_record(r)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert parse_line(line) == r


# ---------------------------------------------------------------------------------------------
# parse_lines / join_records


def test_parse_lines_and_join_partial_full() -> None:
    data = (
        T0_OFF + b" stdout P abc\n"
        + T0_Z + b" stderr F err1\n"
        + T0_Z + b" stdout F def\n"
        + T0_Z + b" stdout F out1\n"
    )  # fmt: skip
    recs = list(parse_lines(data))
    assert recs == [
        rec(b"abc", partial=True),
        rec(b"err1", stream=ERR),
        rec(b"def"),
        rec(b"out1"),
    ]
    assert join_records(recs) == {OUT: b"abcdef\nout1\n", ERR: b"err1\n"}


def test_parse_lines_last_line_without_newline_is_parsed() -> None:
    data = T0_Z + b" stdout F a\n" + T0_Z + b" stdout P b"
    assert list(parse_lines(data)) == [rec(b"a"), rec(b"b", partial=True)]


def test_parse_lines_empty() -> None:
    assert list(parse_lines(b"")) == []
    assert join_records([]) == {OUT: b"", ERR: b""}


def test_parse_lines_names_bad_line_number() -> None:
    data = T0_Z + b" stdout F a\n" + T0_Z + b" stdout Q b\n" + T0_Z + b" stdout F c\n"
    it = parse_lines(data)
    assert next(it) == rec(b"a")
    with pytest.raises(ParseError, match=r"^line 2: unexpected log tag b'Q'"):
        next(it)


def test_parse_lines_skip_invalid_like_kubelet() -> None:
    data = b"junk\n" + T0_Z + b" stdout F a\n\n" + T0_Z + b" stdin F b\n" + T0_Z + b" stderr F c"
    recs = list(parse_lines(data, skip_invalid=True))
    assert recs == [rec(b"a"), rec(b"c", stream=ERR)]


def test_join_empty_full_record_is_a_blank_line() -> None:
    assert join_records([rec(b""), rec(b"", partial=True), rec(b"x")]) == {OUT: b"\nx\n", ERR: b""}


# ---------------------------------------------------------------------------------------------
# LineSplitter


def test_splitter_full_lines() -> None:
    sp = LineSplitter(OUT)
    assert sp.max_line == DEFAULT_MAX_LINE
    assert sp.stream is OUT
    assert sp.feed(b"out1\nout2\n", T0) == [rec(b"out1"), rec(b"out2")]
    assert sp.pending == 0
    assert sp.flush(T0 + 1) == []


def test_splitter_holds_tail_across_feeds() -> None:
    sp = LineSplitter(ERR)
    assert sp.feed(b"er", T0) == []
    assert sp.pending == 2
    assert sp.feed(b"r1\ner", T0 + 5) == [rec(b"err1", stream=ERR, ts=T0 + 5)]
    assert sp.feed(b"r2\n", T0 + 9) == [rec(b"err2", stream=ERR, ts=T0 + 9)]


def test_splitter_empty_lines() -> None:
    assert LineSplitter(OUT).feed(b"\n\na\n", T0) == [rec(b""), rec(b""), rec(b"a")]


def test_splitter_eof_tail_is_partial_and_reproduces_bytes() -> None:
    sp = LineSplitter(OUT)
    recs = sp.feed(b"out1\nno newline", T0)
    recs += sp.flush(T0 + 1)
    assert recs == [rec(b"out1"), rec(b"no newline", partial=True, ts=T0 + 1)]
    data = b"".join(encode_record(r) for r in recs)
    assert data == T0_Z + b" stdout F out1\n" + format_timestamp(T0 + 1) + b" stdout P no newline\n"
    assert join_records(parse_lines(data))[OUT] == b"out1\nno newline"


def test_splitter_flush_mid_stream_cuts_line() -> None:
    sp = LineSplitter(OUT)
    assert sp.feed(b"$ ", T0) == []
    assert sp.flush(T0) == [rec(b"$ ", partial=True)]
    assert sp.feed(b"ls\n", T0) == [rec(b"ls")]
    assert sp.flush(T0) == []


def test_splitter_long_line_cut_into_partials() -> None:
    sp = LineSplitter(OUT, max_line=4)
    assert sp.feed(b"abcdefghij\n", T0) == [
        rec(b"abcd", partial=True),
        rec(b"efgh", partial=True),
        rec(b"ij"),
    ]
    # Exactly a multiple of max_line: the last chunk is the F record, never an empty F.
    assert sp.feed(b"abcdefgh\n", T0) == [rec(b"abcd", partial=True), rec(b"efgh")]
    assert sp.feed(b"abcd\n", T0) == [rec(b"abcd")]


def test_splitter_long_tail_emitted_as_partials() -> None:
    sp = LineSplitter(OUT, max_line=4)
    assert sp.feed(b"abcd", T0) == []  # not longer than max_line: held
    assert sp.pending == 4
    assert sp.feed(b"efghi", T0) == [rec(b"abcd", partial=True), rec(b"efgh", partial=True)]
    assert sp.pending == 1
    assert sp.feed(b"j\n", T0) == [rec(b"ij")]
    assert sp.feed(b"klmnop", T0) == [rec(b"klmn", partial=True)]
    assert sp.flush(T0) == [rec(b"op", partial=True)]


def test_splitter_tty_keeps_carriage_returns() -> None:
    sp = LineSplitter(OUT)
    recs = sp.feed(b"a\r\nb\rc\n\r", T0) + sp.flush(T0)
    assert recs == [rec(b"a\r"), rec(b"b\rc"), rec(b"\r", partial=True)]


def test_splitter_rejects_bad_max_line() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineSplitter(OUT, max_line=0)


def test_splitter_writes_cri_file_kubelet_reads() -> None:
    out, err = LineSplitter(OUT, max_line=3), LineSplitter(ERR, max_line=3)
    recs = out.feed(b"out1\n", T0) + err.feed(b"err1\n", T0) + out.feed(b"x", T0)
    recs += out.flush(T0) + err.flush(T0)
    data = b"".join(encode_record(r) for r in recs)
    assert data == (
        T0_Z + b" stdout P out\n"
        + T0_Z + b" stdout F 1\n"
        + T0_Z + b" stderr P err\n"
        + T0_Z + b" stderr F 1\n"
        + T0_Z + b" stdout P x\n"
    )  # fmt: skip
    assert join_records(parse_lines(data)) == {OUT: b"out1\nx", ERR: b"err1\n"}


# Chunks rich in the bytes that matter: newlines, carriage returns, spaces, tag letters.
pieces = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b" ", b"P ", b"F ", b"stdout ", b"\x00"]),
)
chunk_lists = st.lists(st.lists(pieces, max_size=6).map(b"".join), max_size=12)
max_lines = st.one_of(st.integers(min_value=1, max_value=9), st.just(DEFAULT_MAX_LINE))


@given(chunk_lists, max_lines, st.sampled_from(Stream))
def test_roundtrip_through_file_reproduces_input(
    chunks: list[bytes], max_line: int, stream: Stream
) -> None:
    recs = split_all(chunks, max_line, stream)
    for r in recs:
        assert b"\n" not in r.content
        assert len(r.content) <= max_line
        assert r.stream is stream
    data = b"".join(encode_record(r) for r in recs)
    assert list(parse_lines(data)) == recs
    joined = join_records(parse_lines(data))
    assert joined[stream] == b"".join(chunks)
    other = ERR if stream is OUT else OUT
    assert joined[other] == b""


@given(
    st.lists(st.tuples(st.sampled_from(Stream), chunk_lists.map(b"".join)), max_size=10), max_lines
)
def test_roundtrip_interleaved_streams(writes: list[tuple[Stream, bytes]], max_line: int) -> None:
    splitters = {s: LineSplitter(s, max_line) for s in Stream}
    recs: list[LogRecord] = []
    for i, (stream, data) in enumerate(writes):
        recs += splitters[stream].feed(data, T0 + i)
    for s in Stream:
        recs += splitters[s].flush(T0 + len(writes))
    joined = join_records(parse_lines(b"".join(encode_record(r) for r in recs)))
    for s in Stream:
        assert joined[s] == b"".join(d for ws, d in writes if ws is s)


@given(
    chunk_lists.map(b"".join),
    st.lists(st.integers(min_value=0), max_size=10),
    st.lists(st.integers(min_value=0), max_size=10),
    max_lines,
)
def test_split_independence(
    data: bytes, cuts_a: list[int], cuts_b: list[int], max_line: int
) -> None:
    def chunked(cuts: list[int]) -> list[bytes]:
        points = sorted({c % (len(data) + 1) for c in cuts})
        bounds = [0, *points, len(data)]
        return [data[a:b] for a, b in pairwise(bounds)]

    whole = shape(split_all([data], max_line))
    assert shape(split_all(chunked(cuts_a), max_line)) == whole
    assert shape(split_all(chunked(cuts_b), max_line)) == whole
    assert shape(split_all([bytes([b]) for b in data], max_line)) == whole


# ---------------------------------------------------------------------------------------------
# Capped capture


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"", 0, (b"", False)),
        (b"abc", 0, (b"", True)),
        (b"abc", 2, (b"ab", True)),
        (b"abc", 3, (b"abc", False)),
        (b"abc", 4, (b"abc", False)),
    ],
)
def test_cap_output(data: bytes, limit: int, expected: tuple[bytes, bool]) -> None:
    assert cap_output(data, limit) == expected


def test_cap_output_rejects_negative_limit() -> None:
    with pytest.raises(ValueError, match="negative"):
        cap_output(b"", -1)
    with pytest.raises(ValueError, match="negative"):
        OutputCapture(-1)


def test_output_capture_from_records_per_stream_cap() -> None:
    cap = OutputCapture(limit=6)
    assert cap.limit == 6
    cap.add_records(
        [
            rec(b"abc", partial=True),
            rec(b"e", stream=ERR),
            rec(b"def"),
            rec(b"ghi"),
        ]
    )
    assert cap.output(OUT) == b"abcdef"
    assert cap.truncated(OUT)
    assert cap.dropped(OUT) == 5  # "\n", "ghi", "\n"
    assert cap.output(ERR) == b"e\n"
    assert not cap.truncated(ERR)
    assert cap.dropped(ERR) == 0


def test_output_capture_default_limit() -> None:
    assert EXEC_SYNC_OUTPUT_LIMIT == 16 * 1024 * 1024
    cap = OutputCapture()
    cap.write(OUT, b"x" * (EXEC_SYNC_OUTPUT_LIMIT + 1))
    assert len(cap.output(OUT)) == EXEC_SYNC_OUTPUT_LIMIT
    assert cap.truncated(OUT)
    assert cap.dropped(OUT) == 1


@given(
    st.lists(st.tuples(st.sampled_from(Stream), st.binary(max_size=20)), max_size=20),
    st.integers(0, 50),
)
def test_output_capture_matches_cap_output(writes: list[tuple[Stream, bytes]], limit: int) -> None:
    cap = OutputCapture(limit)
    for stream, data in writes:
        cap.write(stream, data)
    for s in Stream:
        full = b"".join(d for ws, d in writes if ws is s)
        assert (cap.output(s), cap.truncated(s)) == cap_output(full, limit)
        assert cap.dropped(s) == max(0, len(full) - limit)


@given(chunk_lists, max_lines, st.integers(0, 60))
def test_output_capture_of_records_is_capped_join(
    chunks: list[bytes], max_line: int, limit: int
) -> None:
    recs = split_all(chunks, max_line)
    cap = OutputCapture(limit)
    cap.add_records(recs)
    assert (cap.output(OUT), cap.truncated(OUT)) == cap_output(b"".join(chunks), limit)
