"""ttrpc frames, sans I/O: the 10-byte header and a decoder that survives any split.

Every ttrpc message on the connection is one frame::

    0        4        8    9    10
    | length | stream | ty | fl | payload (length bytes)
      u32 BE   u32 BE   u8   u8

``length`` counts the payload only. ``stream`` is the call's id: clients use odd ids that
only grow (a server refuses even or reused ones), and the response travels on the request's
id. ``ty`` is the message type (1 request, 2 response, 3 data for streaming calls); ``fl``
carries stream flags (remote closed / remote open / no data), which unary calls leave 0.

A payload larger than :data:`MAX_MESSAGE` (4 MiB, github.com/containerd/ttrpc's
``messageLengthMax``) is refused on send. On receive its bytes are skipped and the decoder
reports an :class:`OversizedFrame`, so the connection stays usable and the peer gets an
error on that stream only (what the Go implementation does).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER_LENGTH",
    "MAX_MESSAGE",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "MessageType",
    "OversizedFrame",
    "encode_frame",
]

HEADER_LENGTH = 10
MAX_MESSAGE = 4 << 20
MAX_STREAM_ID = (1 << 32) - 1

_HEADER = struct.Struct(">IIBB")


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flag(enum.IntFlag):
    """Stream flags of ttrpc 1.2 streaming calls; unary calls send none."""

    REMOTE_CLOSED = 0x1
    REMOTE_OPEN = 0x2
    NO_DATA = 0x4


class FrameTooLarge(ValueError):
    """A payload to send exceeds the maximum message size."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One received (or to-be-sent) frame. ``type`` is kept as a number: a peer may send
    types this implementation does not know, which callers ignore (forward compatibility)."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose declared length exceeded the limit; its payload was discarded."""

    stream_id: int
    type: int
    flags: int
    length: int


def encode_frame(
    stream_id: int,
    type: int,
    payload: bytes,
    flags: int = 0,
    *,
    max_message: int = MAX_MESSAGE,
) -> bytes:
    """The bytes of one frame. Raises :class:`FrameTooLarge` past ``max_message``."""
    if len(payload) > max_message:
        raise FrameTooLarge(
            f"message of {len(payload)} bytes exceeds the ttrpc maximum of {max_message}"
        )
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} is outside 0..{MAX_STREAM_ID}")
    if not 0 <= type <= 0xFF or not 0 <= flags <= 0xFF:
        raise ValueError(f"message type {type} and flags {flags} must each fit in a byte")
    return _HEADER.pack(len(payload), stream_id, type, flags) + payload


class FrameDecoder:
    """Bytes in, frames out. Feed whatever the transport delivered, in any pieces."""

    __slots__ = ("_buf", "_max", "_skip")

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._buf = bytearray()
        self._skip = 0  # payload bytes of an oversized frame still to discard

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame (a partial frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf += data
        out: list[Frame | OversizedFrame] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER_LENGTH:
            length, stream_id, mtype, flags = _HEADER.unpack_from(buf, pos)
            if length > self._max:
                out.append(OversizedFrame(stream_id, mtype, flags, length))
                pos += HEADER_LENGTH
                available = len(buf) - pos
                dropped = min(length, available)
                pos += dropped
                self._skip = length - dropped
                if self._skip:
                    break  # the rest of this feed was payload; later feeds drop the remainder
                continue
            end = pos + HEADER_LENGTH + length
            if end > len(buf):
                break
            out.append(Frame(stream_id, mtype, flags, bytes(buf[pos + HEADER_LENGTH : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out
