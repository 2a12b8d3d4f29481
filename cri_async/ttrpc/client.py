"""An asyncio ttrpc client over a unix socket: many concurrent unary calls on one connection.

Thin driver around :class:`~cri_async.ttrpc.protocol.ClientConnection`: a
:class:`asyncio.Protocol` feeds it received bytes and resolves each call's future by stream
id. Every call has a deadline (``timeout``), sent to the peer as ``timeout_nano`` too; a call
that times out or is cancelled forgets its stream, so a late answer is dropped. When the
connection drops, every pending call fails at once with
:class:`~cri_async.ttrpc.errors.ConnectionClosed`, and so does every later call.

Addresses are what shims print: ``unix:///run/containerd/s/<hash>``, a bare path, or an
abstract socket ``unix://@name`` (Go's spelling for a leading NUL).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from .errors import (
    Code,
    ConnectionClosed,
    DeadlineExceededError,
    ProtocolError,
    ResourceExhaustedError,
    error_for,
)
from .framing import FrameTooLarge
from .protocol import ClientConnection, ResponseReceived

__all__ = ["Client", "reachable", "socket_path"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

DEFAULT_CALL_TIMEOUT = 30.0
_HIGH_WATER = 1 << 20


def socket_path(address: str) -> str:
    """The ``AF_UNIX`` path for a shim address; refuses other transports."""
    path = address.strip()
    if path.startswith("unix://"):
        path = path[len("unix://") :]
    elif "://" in path:
        raise ValueError(f"unsupported ttrpc address {address!r}: only unix sockets are")
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        raise ValueError(f"ttrpc address {address!r} is not an absolute socket path")
    return path


async def reachable(address: str) -> bool:
    """Whether something accepts connections at ``address`` (a stale socket file or a
    missing one does not)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, socket_path(address))
    except OSError:
        return False
    finally:
        sock.close()
    return True


class _ClientProtocol(asyncio.Protocol):
    """Connection state: the sans-I/O machine, the waiting calls, writability."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.conn = ClientConnection()
        self.calls: dict[int, asyncio.Future[ResponseReceived]] = {}
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()
        self.close_reason = "connection closed"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            fut = self.calls.pop(event.stream_id, None)
            if fut is not None and not fut.done():
                fut.set_result(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.close_reason = f"connection lost: {exc}"
        elif self.close_reason == "connection closed":
            self.close_reason = "connection closed by the peer"
        calls, self.calls = self.calls, {}
        for sid, fut in calls.items():
            self.conn.cancel(sid)
            if not fut.done():
                fut.set_exception(ConnectionClosed(self.close_reason))
        self.closed.set()
        self.writable.set()  # wake writers so they see the closed connection
        log.debug("ttrpc: %s (%s)", self.close_reason, self.address)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class Client:
    """One ttrpc connection. Use :meth:`connect`; close with :meth:`close` (or ``async with``)."""

    def __init__(self, protocol: _ClientProtocol, transport: asyncio.Transport) -> None:
        self._proto = protocol
        self._transport = transport

    @classmethod
    async def connect(cls, address: str, *, timeout: float = 10.0) -> Client:
        """Connect to ``address``; raises ``OSError`` (e.g. ``ConnectionRefusedError``,
        ``FileNotFoundError``) or ``TimeoutError`` when nothing answers there."""
        loop = asyncio.get_running_loop()
        proto = _ClientProtocol(address)
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_unix_connection(lambda: proto, socket_path(address))
        return cls(proto, transport)

    @property
    def address(self) -> str:
        return self._proto.address

    @property
    def closed(self) -> bool:
        return self._proto.closed.is_set()

    async def wait_closed(self) -> None:
        """Return once the connection is gone (closed by either side)."""
        await self._proto.closed.wait()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._proto.closed.is_set():
            self._proto.close_reason = "connection closed by the client"
            self._transport.close()
        await self._proto.closed.wait()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> M:
        """Call ``service/method``; returns the decoded response or raises a
        :class:`~cri_async.ttrpc.errors.TTRPCError` for its status.

        ``timeout`` bounds the whole call, queueing behind a full socket included; on expiry
        the call raises :class:`DeadlineExceededError`.
        """
        payload = await self.call_raw(
            service,
            method,
            request.SerializeToString(),
            timeout=timeout,
            metadata=metadata,
        )
        resp = response_type()
        try:
            resp.ParseFromString(payload)
        except DecodeError as e:
            raise ProtocolError(
                f"{service}/{method}: undecodable {response_type.__name__}: {e}"
            ) from e
        return resp

    async def call_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> bytes:
        """:meth:`call` with serialised request and response."""
        proto = self._proto
        if proto.closed.is_set():
            raise ConnectionClosed(f"{service}/{method}: {proto.close_reason}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sid: int | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await proto.writable.wait()
                if proto.closed.is_set():
                    raise ConnectionClosed(f"{service}/{method}: {proto.close_reason}")
                fut: asyncio.Future[ResponseReceived] = loop.create_future()
                remaining_ns = max(int((deadline - loop.time()) * 1e9), 1)
                try:
                    sid = proto.conn.send_request(
                        service, method, payload, timeout_ns=remaining_ns, metadata=metadata
                    )
                except FrameTooLarge as e:
                    raise ResourceExhaustedError(f"{service}/{method}: {e}") from None
                proto.calls[sid] = fut
                self._transport.write(proto.conn.data_to_send())
                answer = await fut
        except TimeoutError:
            raise DeadlineExceededError(
                f"{service}/{method}: no answer within {timeout:g}s"
            ) from None
        finally:
            if sid is not None:
                proto.calls.pop(sid, None)
                proto.conn.cancel(sid)
        if answer.code != Code.OK:
            raise error_for(answer.code, answer.message)
        return answer.payload
