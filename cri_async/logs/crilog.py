"""The CRI container log format (what kubelet reads for ``kubectl logs``), sans I/O.

One record per line::

    <timestamp> <stream> <tag> <content>\\n
    2026-11-27T04:44:47.617189868Z stdout F out1
    2026-11-27T04:44:47.617189868+00:00 stderr P abc

Facts this module relies on (kubelet ``parseCRILog`` in k8s.io/cri-client/pkg/logs,
containerd ``internal/cri/io/logger.go``, conmon ``src/ctr_logging.c``):

* The timestamp is parsed with Go's ``2006-01-02T15:04:05.999999999Z07:00``: the fraction is
  optional and of variable width, the zone is ``Z`` or ``+hh:mm``/``-hh:mm``. containerd writes
  ``time.RFC3339Nano`` (UTC ``Z``, trailing zeros trimmed, no fraction at all on a whole second);
  conmon writes 9 digits and a numeric offset.
* Fields are separated by single spaces, found left to right; the content is everything after the
  space that ends the tag, so it may hold spaces, ``\\r`` and any other byte except ``\\n``.
* The tag may be ``:``-separated (forward compatibility); only the first part counts: ``P`` is a
  partial line, the reader appends the next record's content with nothing between; anything else
  is a full line, after which the reader emits ``\\n``.
* kubelet requires the space after the tag even when the content is empty (``... stdout F \\n``);
  both writers always put it there. A line without it is rejected here too.

Decisions:

* Written timestamps are UTC with exactly 9 fraction digits and ``Z``
  (``2026-11-27T04:44:47.617189868Z``): fixed width, so a file's lines sort and align, it is the
  same layout kubelet itself prints for ``--timestamps`` (``RFC3339NanoFixed``), and UTC avoids
  depending on the runtime host's zone. Both forms parse, so files written by conmon or
  containerd can be read back.
* Stricter than kubelet, which treats every tag that is not ``P`` as full: the first tag must be
  ``P`` or ``F``, anything else is a ``ParseError``. Fraction digits past the ninth are dropped
  (truncated), as Go does.
* Long lines (``LineSplitter``): a line is cut into ``P`` records of exactly ``max_line`` bytes
  and a final ``F`` record of 1..``max_line`` bytes (0 for an empty line), as containerd does with
  its ``max_container_log_line_size``. Where the cuts fall depends only on the bytes, never on how
  the pipe delivered them. An unterminated tail is held until it grows past ``max_line``.
* End of stream (``LineSplitter.flush``): a remaining unterminated tail is written as one ``P``
  record. containerd does exactly this at EOF, and conmon writes every unterminated read as ``P``
  straight away, so its files end the same way. The reader then shows the tail with no ``\\n``
  added, i.e. the container's output byte for byte.
* ``\\r`` is content: lines split on ``\\n`` only (a tty's ``\\r\\n`` keeps its ``\\r``, as conmon
  does; containerd drops a ``\\r`` before ``\\n``, which would lose bytes).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "DEFAULT_MAX_LINE",
    "EXEC_SYNC_OUTPUT_LIMIT",
    "MAX_TIMESTAMP_NS",
    "MIN_TIMESTAMP_NS",
    "LineSplitter",
    "LogRecord",
    "OutputCapture",
    "ParseError",
    "Stream",
    "cap_output",
    "encode_record",
    "format_timestamp",
    "join_records",
    "parse_line",
    "parse_lines",
    "parse_timestamp",
]

DEFAULT_MAX_LINE = 16 * 1024
"""Default longest record content; longer lines are cut into ``P`` records."""

EXEC_SYNC_OUTPUT_LIMIT = 16 * 1024 * 1024
"""Bytes of each stream ExecSync returns; the rest is dropped."""

_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SECOND = timedelta(seconds=1)

MIN_TIMESTAMP_NS = ((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _SECOND) * _NS_PER_S
"""0001-01-01T00:00:00Z: the earliest timestamp a 4-digit year can spell."""

MAX_TIMESTAMP_NS = (
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH) // _SECOND + 1
) * _NS_PER_S - 1
"""9999-12-31T23:59:59.999999999Z: the latest timestamp a 4-digit year can spell."""

_PREVIEW = 80


class Stream(enum.Enum):
    """The container pipe a record came from (with a tty, everything is ``STDOUT``)."""

    STDOUT = "stdout"
    STDERR = "stderr"


_STREAMS_BY_NAME: dict[bytes, Stream] = {s.value.encode("ascii"): s for s in Stream}
_STREAM_NAMES: dict[Stream, bytes] = {s: name for name, s in _STREAMS_BY_NAME.items()}


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of a CRI log file.

    ``timestamp_ns`` is Unix time in nanoseconds (UTC); ``content`` excludes the line's newline
    and never contains ``\\n``; ``partial`` is the ``P`` tag (the line continues in the next
    record of the same stream).
    """

    timestamp_ns: int
    stream: Stream
    partial: bool
    content: bytes


class ParseError(ValueError):
    """A log line (or timestamp) is not in the CRI log format; the message names the problem."""


def _preview(data: bytes) -> str:
    if len(data) <= _PREVIEW:
        return repr(data)
    return repr(data[:_PREVIEW]) + f"... ({len(data)} bytes)"


# --------------------------------------------------------------------------------------------
# Timestamps


def format_timestamp(ns: int) -> bytes:
    """Format Unix nanoseconds as ``2026-11-27T04:44:47.617189868Z`` (always 9 digits, UTC).

    Raises ``ValueError`` outside years 0001..9999.
    """
    if not MIN_TIMESTAMP_NS <= ns <= MAX_TIMESTAMP_NS:
        raise ValueError(f"timestamp {ns} ns is outside years 0001..9999")
    secs, frac = divmod(ns, _NS_PER_S)
    t = _EPOCH + timedelta(seconds=secs)
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % (
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        frac,
    )


_TIMESTAMP_RE = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)


def parse_timestamp(raw: bytes) -> int:
    """Parse an RFC 3339 timestamp the way kubelet does; return Unix nanoseconds.

    Accepts ``Z`` or ``±hh:mm``, no fraction or any number of fraction digits (past the ninth
    they are truncated). Raises ``ParseError``.
    """
    m = _TIMESTAMP_RE.fullmatch(raw)
    if m is None:
        raise ParseError(
            f"malformed timestamp {_preview(raw)}: expected RFC 3339 such as "
            "2026-11-27T04:44:47.617189868Z or 2026-11-27T04:44:47.617189868+00:00"
        )
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac_digits = m.group(7) or b""
    if m.group(8) is not None:
        offset_s = 0
    else:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise ParseError(f"timestamp {_preview(raw)}: zone offset out of range")
        offset_s = (off_h * 3600 + off_m * 60) * (-1 if m.group(9) == b"-" else 1)
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:
        raise ParseError(f"timestamp {_preview(raw)}: {e}") from None
    frac_ns = int(frac_digits[:9].ljust(9, b"0"))
    local_s = (local - _EPOCH) // _SECOND
    ns = (local_s - offset_s) * _NS_PER_S + frac_ns
    if not MIN_TIMESTAMP_NS <= ns <= MAX_TIMESTAMP_NS:
        raise ParseError(f"timestamp {_preview(raw)}: outside years 0001..9999 in UTC")
    return ns


# --------------------------------------------------------------------------------------------
# Writing


def encode_record(rec: LogRecord) -> bytes:
    """One log file line for ``rec``, newline included.

    Raises ``ValueError`` if the content contains ``\\n`` (it would split the record).
    """
    if b"\n" in rec.content:
        raise ValueError("record content must not contain a newline")
    return b"%s %s %s %s\n" % (
        format_timestamp(rec.timestamp_ns),
        _STREAM_NAMES[rec.stream],
        b"P" if rec.partial else b"F",
        rec.content,
    )


def _cut_point(length: int, max_line: int) -> int:
    """Bytes of a ``length``-byte line that go into ``P`` chunks; the rest (1..max_line) is F."""
    return ((length - 1) // max_line) * max_line if length > 0 else 0


class LineSplitter:
    """Turns the bytes of one container pipe into log records; holds the unfinished tail.

    ``feed`` returns an ``F`` record per complete line (long lines first yield ``P`` chunks of
    ``max_line`` bytes) and ``P`` chunks of an unterminated tail once it exceeds ``max_line``.
    ``flush`` emits the held tail as one ``P`` record: call it at EOF; it may also be called
    mid-stream (e.g. on a timer so a prompt without newline shows up), which cuts the line there.
    All records of one call carry the ``now_ns`` given to it.
    """

    __slots__ = ("_max_line", "_pending", "_stream")

    def __init__(self, stream: Stream, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {max_line}")
        self._stream = stream
        self._max_line = max_line
        self._pending = bytearray()

    @property
    def stream(self) -> Stream:
        return self._stream

    @property
    def max_line(self) -> int:
        return self._max_line

    @property
    def pending(self) -> int:
        """Bytes held: the unterminated tail not yet written (at most ``max_line``)."""
        return len(self._pending)

    def _chunks(self, line: bytes, now_ns: int, out: list[LogRecord]) -> None:
        m = self._max_line
        cut = _cut_point(len(line), m)
        for i in range(0, cut, m):
            out.append(LogRecord(now_ns, self._stream, True, line[i : i + m]))
        out.append(LogRecord(now_ns, self._stream, False, line[cut:]))

    def feed(self, data: bytes, now_ns: int) -> list[LogRecord]:
        """Consume ``data``; return the records it completes, in order."""
        out: list[LogRecord] = []
        pending = self._pending
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            if pending:
                pending += data[start:nl]
                line = bytes(pending)
                pending.clear()
            else:
                line = data[start:nl]
            self._chunks(line, now_ns, out)
            start = nl + 1
        pending += data[start:]
        m = self._max_line
        if len(pending) > m:
            cut = _cut_point(len(pending), m)
            for i in range(0, cut, m):
                out.append(LogRecord(now_ns, self._stream, True, bytes(pending[i : i + m])))
            del pending[:cut]
        return out

    def flush(self, now_ns: int) -> list[LogRecord]:
        """Emit the held tail (if any) as one ``P`` record; used at EOF."""
        if not self._pending:
            return []
        rec = LogRecord(now_ns, self._stream, True, bytes(self._pending))
        self._pending.clear()
        return [rec]


# --------------------------------------------------------------------------------------------
# Reading


def parse_line(line: bytes) -> LogRecord:
    """Parse one log line (a trailing ``\\n`` is allowed). Raises ``ParseError``."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if not line:
        raise ParseError("empty line")
    if b"\n" in line:
        raise ParseError(f"line contains an embedded newline: {_preview(line)}")
    ts_end = line.find(b" ")
    if ts_end < 0:
        raise ParseError(f"timestamp not found (no space after it): {_preview(line)}")
    timestamp_ns = parse_timestamp(line[:ts_end])
    rest = line[ts_end + 1 :]
    stream_end = rest.find(b" ")
    if stream_end < 0:
        raise ParseError(f"stream type not found (no space after it): {_preview(line)}")
    stream = _STREAMS_BY_NAME.get(rest[:stream_end])
    if stream is None:
        raise ParseError(
            f"unexpected stream type {_preview(rest[:stream_end])}: expected stdout or stderr"
        )
    rest = rest[stream_end + 1 :]
    tag_end = rest.find(b" ")
    if tag_end < 0:
        raise ParseError(
            f"log tag not found (it must be followed by a space, even before empty content): "
            f"{_preview(line)}"
        )
    tag = rest[:tag_end].split(b":", 1)[0]
    if tag == b"F":
        partial = False
    elif tag == b"P":
        partial = True
    else:
        raise ParseError(f"unexpected log tag {_preview(rest[:tag_end])}: expected P or F")
    return LogRecord(timestamp_ns, stream, partial, rest[tag_end + 1 :])


def parse_lines(data: bytes, *, skip_invalid: bool = False) -> Iterator[LogRecord]:
    """Parse the lines of a log file's bytes, in order.

    A last line without ``\\n`` is parsed too (kubelet does the same). An invalid line raises
    ``ParseError`` naming its 1-based line number, or with ``skip_invalid`` is skipped, as
    kubelet does.
    """
    start = 0
    lineno = 0
    size = len(data)
    while start < size:
        nl = data.find(b"\n", start)
        end = size if nl < 0 else nl
        lineno += 1
        try:
            rec = parse_line(data[start:end])
        except ParseError as e:
            if not skip_invalid:
                raise ParseError(f"line {lineno}: {e}") from None
        else:
            yield rec
        start = end + 1


def join_records(records: Iterable[LogRecord]) -> dict[Stream, bytes]:
    """Reassemble records into each stream's output as ``kubectl logs`` shows it.

    Contents are concatenated per stream with ``\\n`` after each full (``F``) record. Both
    streams are always present in the result.
    """
    bufs = {s: bytearray() for s in Stream}
    for rec in records:
        buf = bufs[rec.stream]
        buf += rec.content
        if not rec.partial:
            buf += b"\n"
    return {s: bytes(b) for s, b in bufs.items()}


# --------------------------------------------------------------------------------------------
# Capped capture (ExecSync)


def cap_output(data: bytes, limit: int) -> tuple[bytes, bool]:
    """Keep the first ``limit`` bytes of ``data``; the flag says whether anything was cut."""
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    if len(data) <= limit:
        return data, False
    return data[:limit], True


class OutputCapture:
    """Per-stream byte sink that keeps the first ``limit`` bytes of each stream.

    Bytes past the cap are counted and dropped, so memory stays bounded however much a command
    writes (ExecSync returns at most ``EXEC_SYNC_OUTPUT_LIMIT`` per stream).
    """

    __slots__ = ("_bufs", "_dropped", "_limit")

    def __init__(self, limit: int = EXEC_SYNC_OUTPUT_LIMIT) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        self._limit = limit
        self._bufs = {s: bytearray() for s in Stream}
        self._dropped = dict.fromkeys(Stream, 0)

    @property
    def limit(self) -> int:
        return self._limit

    def write(self, stream: Stream, data: bytes) -> None:
        """Append raw bytes to ``stream``."""
        buf = self._bufs[stream]
        room = self._limit - len(buf)
        if len(data) <= room:
            buf += data
        else:
            buf += data[:room]
            self._dropped[stream] += len(data) - room

    def add_record(self, rec: LogRecord) -> None:
        """Append a record's content, plus ``\\n`` if it is a full line (as ``join_records``)."""
        self.write(rec.stream, rec.content)
        if not rec.partial:
            self.write(rec.stream, b"\n")

    def add_records(self, records: Iterable[LogRecord]) -> None:
        for rec in records:
            self.add_record(rec)

    def output(self, stream: Stream) -> bytes:
        """The kept bytes of ``stream`` (at most ``limit``)."""
        return bytes(self._bufs[stream])

    def truncated(self, stream: Stream) -> bool:
        """Whether bytes of ``stream`` were dropped."""
        return self._dropped[stream] > 0

    def dropped(self, stream: Stream) -> int:
        """How many bytes of ``stream`` were dropped."""
        return self._dropped[stream]
