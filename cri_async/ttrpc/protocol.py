"""ttrpc connection state machines for unary calls, sans I/O.

:class:`ClientConnection` turns calls into request frames and received bytes into
:class:`ResponseReceived` events; :class:`ServerConnection` turns received bytes into
:class:`RequestReceived` events and answers into response frames. Bytes to write pile up
until ``data_to_send()`` takes them (h2-style), so a driver writes once per batch.

Facts kept (github.com/containerd/ttrpc, 1.1 and 1.2 wire):

* A request frame (type 1) carries ``ttrpc.Request`` {service, method, payload,
  timeout_nano, metadata}; the answer, on the same stream id, is a response frame (type 2)
  with ``ttrpc.Response`` {status, payload}. A missing status means OK.
* Client stream ids are odd, start at 1 and grow by 2; a 1.2 server refuses a reused or
  smaller id. Ids are 32-bit, so a connection runs out after 2**31 calls.
* A server answers a request it cannot take on that stream: even id, reused id, or an
  undecodable envelope (INVALID_ARGUMENT), an oversized frame (RESOURCE_EXHAUSTED). Unknown
  message types are ignored; data frames (streaming calls) are refused as 1.2 does for a
  stream it does not know, since only unary calls are served here.
* A client ignores a response for a stream it is not waiting on (a call it gave up on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cri_async.api.ttrpc import ttrpc_pb2

from .errors import Code, ConnectionClosed
from .framing import (
    MAX_MESSAGE,
    MAX_STREAM_ID,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    encode_frame,
)

__all__ = [
    "ClientConnection",
    "Metadata",
    "RequestReceived",
    "ResponseReceived",
    "ServerConnection",
]

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to call ``stream_id``: ``code`` OK with ``payload``, or an error."""

    stream_id: int
    code: int
    message: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    service: str
    method: str
    payload: bytes
    timeout_ns: int  # 0: the caller set no deadline
    metadata: Metadata


class ClientConnection:
    """The calling side of one connection."""

    __slots__ = ("_decoder", "_max", "_next_id", "_out", "_pending")

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._decoder = FrameDecoder(max_message=max_message)
        self._next_id = 1
        self._pending: set[int] = set()
        self._out = bytearray()

    @property
    def pending(self) -> frozenset[int]:
        """Stream ids of calls sent and not yet answered or cancelled."""
        return frozenset(self._pending)

    def send_request(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout_ns: int = 0,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Queue a request; returns its stream id. Raises ``FrameTooLarge`` (nothing is
        queued) when the request exceeds the maximum message size."""
        if self._next_id > MAX_STREAM_ID:
            raise ConnectionClosed("ttrpc stream ids exhausted on this connection; reconnect")
        req = ttrpc_pb2.Request(
            service=service,
            method=method,
            payload=payload,
            timeout_nano=max(timeout_ns, 0),
            metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata],
        )
        sid = self._next_id
        frame = encode_frame(
            sid, MessageType.REQUEST, req.SerializeToString(), max_message=self._max
        )
        self._next_id += 2
        self._pending.add(sid)
        self._out += frame
        return sid

    def cancel(self, stream_id: int) -> None:
        """Stop waiting for ``stream_id``; a late answer is then dropped."""
        self._pending.discard(stream_id)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[ResponseReceived]:
        events: list[ResponseReceived] = []
        for frame in self._decoder.feed(data):
            sid = frame.stream_id
            if sid not in self._pending:
                continue
            if isinstance(frame, OversizedFrame):
                if frame.type != MessageType.RESPONSE:
                    continue
                events.append(
                    ResponseReceived(
                        sid,
                        Code.RESOURCE_EXHAUSTED,
                        f"response of {frame.length} bytes exceeds the ttrpc maximum "
                        f"of {self._max}",
                        b"",
                    )
                )
            elif frame.type == MessageType.RESPONSE:
                events.append(_decode_response(sid, frame.payload))
            else:
                continue
            self._pending.discard(sid)
        return events


def _decode_response(sid: int, payload: bytes) -> ResponseReceived:
    resp = ttrpc_pb2.Response()
    try:
        resp.ParseFromString(payload)
    except DecodeError as e:
        return ResponseReceived(sid, Code.INTERNAL, f"undecodable ttrpc response: {e}", b"")
    return ResponseReceived(sid, resp.status.code, resp.status.message, resp.payload)


class ServerConnection:
    """The serving side of one connection."""

    __slots__ = ("_decoder", "_last_id", "_max", "_out")

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._decoder = FrameDecoder(max_message=max_message)
        self._last_id = 0
        self._out = bytearray()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_response(
        self, stream_id: int, code: int = Code.OK, message: str = "", payload: bytes = b""
    ) -> None:
        """Queue the answer for ``stream_id``. A payload too large for one message becomes
        a RESOURCE_EXHAUSTED answer instead, so the caller is never left waiting."""
        resp = ttrpc_pb2.Response(
            status=ttrpc_pb2.Status(code=code, message=message), payload=payload
        )
        body = resp.SerializeToString()
        if len(body) > self._max:
            resp = ttrpc_pb2.Response(
                status=ttrpc_pb2.Status(
                    code=Code.RESOURCE_EXHAUSTED,
                    message=f"response of {len(body)} bytes exceeds the ttrpc maximum "
                    f"of {self._max}",
                )
            )
            body = resp.SerializeToString()
        self._out += encode_frame(stream_id, MessageType.RESPONSE, body, max_message=self._max)

    def receive_data(self, data: bytes) -> list[RequestReceived]:
        events: list[RequestReceived] = []
        for frame in self._decoder.feed(data):
            sid = frame.stream_id
            if isinstance(frame, OversizedFrame):
                self.send_response(
                    sid,
                    Code.RESOURCE_EXHAUSTED,
                    f"message length {frame.length} exceeds maximum message size of {self._max}",
                )
                continue
            if frame.type not in (MessageType.REQUEST, MessageType.DATA):
                continue  # unknown types are ignored for forward compatibility
            if sid % 2 != 1:
                self.send_response(
                    sid,
                    Code.INVALID_ARGUMENT,
                    "StreamID must be odd for client initiated streams",
                )
                continue
            if frame.type == MessageType.DATA:
                self.send_response(sid, Code.INVALID_ARGUMENT, "StreamID is no longer active")
                continue
            if sid <= self._last_id:
                self.send_response(
                    sid, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"
                )
                continue
            self._last_id = sid
            req = ttrpc_pb2.Request()
            try:
                req.ParseFromString(frame.payload)
            except DecodeError as e:
                self.send_response(sid, Code.INVALID_ARGUMENT, f"unmarshal request error: {e}")
                continue
            events.append(
                RequestReceived(
                    sid,
                    req.service,
                    req.method,
                    req.payload,
                    req.timeout_nano,
                    tuple((kv.key, kv.value) for kv in req.metadata),
                )
            )
        return events
