"""SPDY/3.1 frames: records, the encoder and an incremental decoder (sans-I/O).

Control frames are ``1 | version(15)=3 | type(16) | flags(8) | length(24) | payload``;
data frames are ``0 | stream-id(31) | flags(8) | length(24) | data``; integers are
big-endian. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib streams primed with the
SPDY/3 dictionary, one compression context per direction for the whole connection, each
block ending with a sync flush. So the encoder and the decoder each own one zlib object and
must see every block of their direction in wire order, including blocks of frames that are
then ignored or refused.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from cri_async.streaming.spdy_dictionary import SPDY3_DICTIONARY

VERSION = 3
MAX_LENGTH = 0xFFFFFF  # 24-bit length field
MAX_STREAM_ID = 0x7FFFFFFF
MAX_WINDOW = 0x7FFFFFFF
# Decompressed header blocks beyond this are refused: a zlib bomb must not cost memory.
MAX_HEADER_BLOCK = 256 * 1024
# Headers whose values repeat are joined with NUL on the wire.
_VALUE_SEP = "\x00"

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01

Headers = tuple[tuple[str, str], ...]


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(enum.IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False
    associated_id: int = 0
    priority: int = 0
    slot: int = 0


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    entries: tuple[Setting, ...] = ()
    clear: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


Frame = (
    SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data
)


class FrameError(Exception):
    """The peer sent bytes that are not valid SPDY/3.1; the connection cannot continue."""


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of a header, matched case-insensitively."""
    name = name.lower()
    for k, v in headers:
        if k == name:
            return v
    return None


# -- header blocks ------------------------------------------------------------------------


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: names lowercased, repeated names joined by NUL."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    out = [struct.pack(">I", len(merged))]
    for name, values in merged.items():
        raw_name = name.encode()
        raw_value = _VALUE_SEP.join(values).encode()
        out.append(struct.pack(">I", len(raw_name)) + raw_name)
        out.append(struct.pack(">I", len(raw_value)) + raw_value)
    return b"".join(out)


def decode_header_block(raw: bytes) -> Headers:
    """Parse an uncompressed block. Names are lowercased; NUL-joined values split apart."""
    view = memoryview(raw)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise FrameError("truncated header block")
        chunk = bytes(view[pos : pos + n])
        pos += n
        return chunk

    def u32() -> int:
        value: int = struct.unpack(">I", take(4))[0]
        return value

    count = u32()
    if count * 8 > len(raw):
        raise FrameError(f"header block claims {count} pairs in {len(raw)} bytes")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _ in range(count):
        try:
            name = take(u32()).decode().lower()
            value = take(u32()).decode()
        except UnicodeDecodeError:
            raise FrameError("header block is not UTF-8") from None
        if not name:
            raise FrameError("empty header name")
        if name in seen:
            raise FrameError(f"duplicate header {name!r}")
        seen.add(name)
        out.extend((name, v) for v in value.split(_VALUE_SEP))
    if pos != len(raw):
        raise FrameError("trailing bytes after the header block")
    return tuple(out)


class HeaderCompressor:
    """The sending direction's zlib context (never reset for the connection's life)."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, SPDY3_DICTIONARY
        )

    def compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The receiving direction's zlib context."""

    def __init__(self, limit: int = MAX_HEADER_BLOCK) -> None:
        self._z = zlib.decompressobj(zdict=SPDY3_DICTIONARY)
        self._limit = limit

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, self._limit + 1)
        except zlib.error as e:
            raise FrameError(f"bad compressed header block: {e}") from None
        if len(raw) > self._limit or self._z.unconsumed_tail:
            raise FrameError(f"header block larger than {self._limit} bytes")
        if self._z.eof or self._z.unused_data:
            raise FrameError("header compression stream ended")
        return decode_header_block(raw)


# -- encoding -----------------------------------------------------------------------------


def _control(kind: FrameType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"{kind.name} payload of {len(payload)} bytes is too long")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def _check_id(stream_id: int, *, zero_ok: bool = False) -> None:
    if not (0 if zero_ok else 1) <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} out of range")


def data_header(stream_id: int, length: int, fin: bool) -> bytes:
    """The 8-byte header of a DATA frame, so large payloads need not be copied into it."""
    _check_id(stream_id)
    if length > MAX_LENGTH:
        raise ValueError(f"DATA payload of {length} bytes is too long")
    return struct.pack(">II", stream_id, ((FLAG_FIN if fin else 0) << 24) | length)


class FrameEncoder:
    """Frames to bytes. Calls must happen in wire order: header blocks share one context."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case Data(sid, data, fin):
                return data_header(sid, len(data), fin) + data
            case SynStream(sid, headers, fin, uni, assoc, prio, slot):
                _check_id(sid)
                _check_id(assoc, zero_ok=True)
                flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if uni else 0)
                head = struct.pack(">IIBB", sid, assoc, (prio & 7) << 5, slot)
                return _control(FrameType.SYN_STREAM, flags, head + self._headers.compress(headers))
            case SynReply(sid, headers, fin):
                _check_id(sid)
                block = struct.pack(">I", sid) + self._headers.compress(headers)
                return _control(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, block)
            case HeadersFrame(sid, headers, fin):
                _check_id(sid)
                block = struct.pack(">I", sid) + self._headers.compress(headers)
                return _control(FrameType.HEADERS, FLAG_FIN if fin else 0, block)
            case RstStream(sid, status):
                _check_id(sid)
                if not 1 <= status <= 0xFFFFFFFF:
                    raise ValueError("RST_STREAM status 0 is illegal")
                return _control(FrameType.RST_STREAM, 0, struct.pack(">II", sid, status))
            case Settings(entries, clear):
                body = [struct.pack(">I", len(entries))]
                body += [struct.pack(">II", (e.flags << 24) | e.id, e.value) for e in entries]
                return _control(
                    FrameType.SETTINGS, FLAG_CLEAR_SETTINGS if clear else 0, b"".join(body)
                )
            case Ping(ping_id):
                return _control(FrameType.PING, 0, struct.pack(">I", ping_id))
            case GoAway(last_good, status):
                _check_id(last_good, zero_ok=True)
                return _control(FrameType.GOAWAY, 0, struct.pack(">II", last_good, status))
            case WindowUpdate(sid, delta):
                _check_id(sid, zero_ok=True)
                if not 1 <= delta <= MAX_WINDOW:
                    raise ValueError(f"WINDOW_UPDATE delta {delta} out of range")
                return _control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", sid, delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")


# -- decoding -----------------------------------------------------------------------------


class FrameDecoder:
    """Bytes to frames, however the byte stream is split. After a FrameError the decoder
    is dead: every later call raises again (the connection must end)."""

    def __init__(self, max_header_block: int = MAX_HEADER_BLOCK) -> None:
        self._buf = bytearray()
        self._headers = HeaderDecompressor(max_header_block)
        self._error: FrameError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= 8:
                first, flags_len = struct.unpack_from(">II", buf, pos)
                length = flags_len & MAX_LENGTH
                if len(buf) - pos < 8 + length:
                    break
                flags = flags_len >> 24
                payload = bytes(memoryview(buf)[pos + 8 : pos + 8 + length])
                pos += 8 + length
                if first & 0x80000000:
                    frame = self._control((first >> 16) & 0x7FFF, first & 0xFFFF, flags, payload)
                    if frame is not None:
                        frames.append(frame)
                else:
                    if first == 0:
                        raise FrameError("DATA frame on stream 0")
                    frames.append(Data(first, payload, bool(flags & FLAG_FIN)))
        except FrameError as e:
            self._error = e
            raise
        finally:
            del buf[:pos]
        return frames

    def _block(self, payload: bytes, offset: int) -> Headers:
        return self._headers.decompress(payload[offset:])

    def _control(self, version: int, kind: int, flags: int, p: bytes) -> Frame | None:
        if version != VERSION:
            raise FrameError(f"unsupported SPDY version {version}")
        n = len(p)

        def exact(size: int) -> None:
            if n != size:
                raise FrameError(f"{FrameType(kind).name} frame of length {n}, want {size}")

        def stream_id(value: int) -> int:
            sid = value & MAX_STREAM_ID
            if sid == 0:
                raise FrameError(f"{FrameType(kind).name} frame on stream 0")
            return sid

        match kind:
            case FrameType.SYN_STREAM:
                if n < 10:
                    raise FrameError("short SYN_STREAM")
                sid, assoc, prio, slot = struct.unpack_from(">IIBB", p)
                return SynStream(
                    stream_id(sid),
                    self._block(p, 10),
                    fin=bool(flags & FLAG_FIN),
                    unidirectional=bool(flags & FLAG_UNIDIRECTIONAL),
                    associated_id=assoc & MAX_STREAM_ID,
                    priority=prio >> 5,
                    slot=slot,
                )
            case FrameType.SYN_REPLY | FrameType.HEADERS:
                if n < 4:
                    raise FrameError(f"short {FrameType(kind).name}")
                sid = stream_id(struct.unpack_from(">I", p)[0])
                headers = self._block(p, 4)
                if kind == FrameType.SYN_REPLY:
                    return SynReply(sid, headers, fin=bool(flags & FLAG_FIN))
                return HeadersFrame(sid, headers, fin=bool(flags & FLAG_FIN))
            case FrameType.RST_STREAM:
                exact(8)
                sid, status = struct.unpack(">II", p)
                if status == 0:
                    raise FrameError("RST_STREAM with status 0")
                return RstStream(stream_id(sid), status)
            case FrameType.SETTINGS:
                if n < 4:
                    raise FrameError("short SETTINGS")
                (count,) = struct.unpack_from(">I", p)
                exact(4 + 8 * count)
                entries = []
                for i in range(count):
                    flag_id, value = struct.unpack_from(">II", p, 4 + 8 * i)
                    entries.append(Setting(flag_id & 0xFFFFFF, value, flag_id >> 24))
                return Settings(tuple(entries), clear=bool(flags & FLAG_CLEAR_SETTINGS))
            case FrameType.PING:
                exact(4)
                if flags:
                    raise FrameError("PING with flags")
                return Ping(struct.unpack(">I", p)[0])
            case FrameType.GOAWAY:
                exact(8)
                last, status = struct.unpack(">II", p)
                return GoAway(last & MAX_STREAM_ID, status)
            case FrameType.WINDOW_UPDATE:
                exact(8)
                sid, delta = struct.unpack(">II", p)
                delta &= MAX_WINDOW
                if delta == 0:
                    raise FrameError("WINDOW_UPDATE with delta 0")
                return WindowUpdate(sid & MAX_STREAM_ID, delta)
        # Unknown control types (NOOP, CREDENTIAL, future ones) are ignored, as SPDY says;
        # none of them carries a header block, so the zlib context is not affected.
        return None
