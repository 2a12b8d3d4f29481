"""The Kubernetes channel protocols carried in WebSocket messages (sans-I/O).

Every message is one channel number followed by its payload. Binary protocols put the
channel in the first byte; the base64 protocols send *text* messages made of the ASCII digit
``'0'+channel`` and the payload in padded standard base64. ``v5.channel.k8s.io`` adds the
CLOSE signal ``[255, channel]`` (client to server only) that half-closes one channel.

Port-forward over WebSocket uses two channels per requested port (2i data, 2i+1 error); the
server's first message on each is the port as 2 little-endian bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE = 255
EXEC_CHANNELS = 5


class ChannelProtocol(enum.Enum):
    V5 = "v5.channel.k8s.io"
    V4 = "v4.channel.k8s.io"
    V4_BASE64 = "v4.base64.channel.k8s.io"
    V1 = "channel.k8s.io"
    V1_BASE64 = "base64.channel.k8s.io"
    # The client offered no subprotocol: binary framing with v1 semantics.
    NONE = ""

    @property
    def base64(self) -> bool:
        return self in (ChannelProtocol.V4_BASE64, ChannelProtocol.V1_BASE64)

    @property
    def json_status(self) -> bool:
        """v4+ report a JSON metav1.Status on the error channel, older ones plain text."""
        return self in (ChannelProtocol.V5, ChannelProtocol.V4, ChannelProtocol.V4_BASE64)

    @property
    def close_signal(self) -> bool:
        return self is ChannelProtocol.V5


EXEC_PROTOCOLS = (
    ChannelProtocol.V5,
    ChannelProtocol.V4,
    ChannelProtocol.V4_BASE64,
    ChannelProtocol.V1,
    ChannelProtocol.V1_BASE64,
    ChannelProtocol.NONE,
)
PORT_FORWARD_PROTOCOLS = (ChannelProtocol.V4, ChannelProtocol.V4_BASE64, ChannelProtocol.NONE)


def negotiate(
    offered: Sequence[str], supported: Sequence[ChannelProtocol]
) -> ChannelProtocol | None:
    """The first subprotocol in the client's order that we support; a client that offers
    none gets the unnamed binary protocol. None: no match (the server answers 403)."""
    offered = [p.strip() for p in offered if p.strip()]
    if not offered:
        return ChannelProtocol.NONE if ChannelProtocol.NONE in supported else None
    names = {p.value: p for p in supported if p is not ChannelProtocol.NONE}
    for name in offered:
        if name in names:
            return names[name]
    return None


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelClose:
    channel: int


class ChannelProtocolError(Exception):
    """A message that must end the connection (a malformed v5 CLOSE)."""


def encode(protocol: ChannelProtocol, channel: int, data: bytes) -> bytes | str:
    """One message: bytes for binary protocols, str (a text message) for base64 ones."""
    if not 0 <= channel < CLOSE:
        raise ValueError(f"channel {channel} out of range")
    if protocol.base64:
        if channel > 0xFF - ord("0"):
            raise ValueError(f"channel {channel} cannot be written as one character")
        return chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")
    return bytes((channel,)) + data


def encode_close(channel: int) -> bytes:
    """The v5 CLOSE signal: the sender will write nothing more on ``channel``."""
    return bytes((CLOSE, channel))


def decode(
    protocol: ChannelProtocol, message: bytes | str, channels: int
) -> ChannelData | ChannelClose | None:
    """A received message, or None for what the protocol says to drop (empty messages,
    channels out of range, bad base64)."""
    raw = message.encode("latin-1", "replace") if isinstance(message, str) else message
    if not raw:
        return None
    if protocol.close_signal and raw[0] == CLOSE:
        if len(raw) != 2 or raw[1] >= channels:
            raise ChannelProtocolError(f"malformed CLOSE signal {raw!r}")
        return ChannelClose(raw[1])
    if protocol.base64:
        channel = raw[0] - ord("0")
        try:
            data = base64.b64decode(raw[1:], validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        channel, data = raw[0], raw[1:]
    if not 0 <= channel < channels:
        return None
    return ChannelData(channel, data)


def port_prefix(port: int) -> bytes:
    return struct.pack("<H", port)


class PortPrefixReader:
    """Client side of one port-forward channel: strips the server's 2-byte port prefix,
    wherever message boundaries fall, and checks it names the expected port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._head = b""

    @property
    def seen(self) -> bool:
        return len(self._head) == 2

    def feed(self, data: bytes) -> bytes:
        if self.seen:
            return data
        need = 2 - len(self._head)
        self._head += data[:need]
        if self.seen:
            got = struct.unpack("<H", self._head)[0]
            if got != self.port:
                raise ChannelProtocolError(f"channel announces port {got}, expected {self.port}")
        return data[need:]
