"""What one client may make the server hold: the size of a request message and the number
of concurrent streams (RPCs) on one connection.

grpclib 0.4 bounds neither (it has no max message size at all): this module adds both,
reaching into grpclib's internals for it (a server stream's HTTP/2 stream, codec and
request type; the protocol a connection gets), which the exact pins of grpclib and h2
keep stable.

* ``recv_request`` reads the 5-byte gRPC message prefix first and refuses a message longer
  than the limit with RESOURCE_EXHAUSTED, naming ``server.max_request_bytes``, before it
  reads the message: HTTP/2 flow control keeps what a client can send ahead of that read
  to one stream window. A request that is not a valid message of its type (bad wire
  format, invalid UTF-8 in a string field) is INVALID_ARGUMENT; a compressed one (no
  ``grpc-encoding`` is ever negotiated) is UNIMPLEMENTED.
* ``BoundedServer`` advertises ``SETTINGS_MAX_CONCURRENT_STREAMS`` (``server.
  max_concurrent_streams``) on every connection. Clients queue calls beyond it (grpclib,
  grpc-go); h2 enforces it on those that do not, and grpclib then closes their connection.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from grpclib import GRPCError, Status
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream
from h2.settings import SettingCodes

Req = TypeVar("Req")

PREFIX = struct.Struct(">?I")  # compressed flag, message length


async def recv_request(stream: Stream[Req, Any], limit: int) -> Req:
    """The request message of a unary or server-streaming call, read within ``limit``."""
    raw = stream._stream
    try:
        prefix = await raw.recv_data(PREFIX.size)
        if len(prefix) < PREFIX.size:
            raise GRPCError(Status.INVALID_ARGUMENT, "the request carries no message")
        compressed, length = PREFIX.unpack(prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed request messages are not supported")
        if length > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"the request message is {length} bytes; server.max_request_bytes allows {limit}",
            )
        data = await raw.recv_data(length)
    except AssertionError:  # grpclib's buffer: the stream ended inside the message
        raise GRPCError(
            Status.INVALID_ARGUMENT, "the request stream ended inside its message"
        ) from None
    try:
        message: Req = stream._codec.decode(data, stream._recv_type)
    except DecodeError as e:
        name = stream._recv_type.__name__
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"the request is not a valid {name} message: {e}"
        ) from None
    return message


class _StreamLimit(asyncio.Protocol):
    """grpclib's protocol for one connection, which then advertises the stream limit."""

    def __init__(self, inner: H2Protocol, max_streams: int) -> None:
        self.inner = inner
        self.max_streams = max_streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)
        conn = self.inner.connection
        conn._connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.flush()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)


class BoundedServer(Server):
    """grpclib's server, with at most ``max_concurrent_streams`` streams per connection."""

    def __init__(self, handlers: Any, *, max_concurrent_streams: int) -> None:
        super().__init__(handlers)
        self._max_streams = max_concurrent_streams

    def _protocol_factory(self) -> H2Protocol:
        # The listener only calls the protocol's asyncio methods: the wrapper stands in.
        return _StreamLimit(super()._protocol_factory(), self._max_streams)  # type: ignore[return-value]
