"""A small asyncio ttrpc server on a unix socket (unary methods only).

What cri-async serves over ttrpc is the events endpoint shims publish to; the server is
generic anyway: :meth:`Server.register` binds ``(service, method)`` to an async handler that
takes the decoded request and returns the response message. Each request runs in its own
task with a deadline: the caller's ``timeout_nano`` when it sent one, else
``handler_timeout``. A handler raising :class:`~cri_async.ttrpc.errors.TTRPCError` answers
with that status; any other exception answers INTERNAL (and is logged), an unknown method
UNIMPLEMENTED, a deadline DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from .client import reachable
from .errors import Code, TTRPCError
from .protocol import Metadata, RequestReceived, ServerConnection

__all__ = ["CallContext", "Server"]

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)


@dataclass(frozen=True, slots=True)
class CallContext:
    service: str
    method: str
    metadata: Metadata

    def get(self, key: str) -> str | None:
        """The first metadata value for ``key`` (keys compare case-insensitively)."""
        for k, v in self.metadata:
            if k.lower() == key.lower():
                return v
        return None


_Handler = Callable[[bytes, CallContext], Awaitable[bytes]]


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self._server = server
        self._conn = ServerConnection()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._protocols.add(self)

    def data_received(self, data: bytes) -> None:
        for req in self._conn.receive_data(data):
            task = asyncio.get_running_loop().create_task(self._serve(req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._protocols.discard(self)
        for task in self._tasks:
            task.cancel()
        self._transport = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    async def _serve(self, req: RequestReceived) -> None:
        code, message, payload = await self._server._dispatch(req)
        self._conn.send_response(req.stream_id, code, message, payload)
        self._flush()


class Server:
    """Serve registered methods on a unix socket: ``register(...)``, ``await start(path)``,
    ``await close()``."""

    def __init__(self, *, handler_timeout: float = 30.0) -> None:
        self.handler_timeout = handler_timeout
        self._handlers: dict[tuple[str, str], _Handler] = {}
        self._server: asyncio.Server | None = None
        self._protocols: set[_ServerProtocol] = set()
        self.path = ""

    def register(
        self,
        service: str,
        method: str,
        request_type: type[Req],
        handler: Callable[[Req, CallContext], Awaitable[Message]],
    ) -> None:
        async def raw(payload: bytes, ctx: CallContext) -> bytes:
            req = request_type()
            try:
                req.ParseFromString(payload)
            except DecodeError as e:
                raise _BadRequest(f"undecodable {request_type.__name__}: {e}") from e
            return (await handler(req, ctx)).SerializeToString()

        self._handlers[(service, method)] = raw

    async def start(self, path: str, *, mode: int = 0o600) -> None:
        """Listen on ``path``. A stale socket file (nobody accepting) is replaced; a live
        one is an error (``OSError``), so two servers never share a path."""
        if await reachable(path):
            raise FileExistsError(f"a server is already listening on {path}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ServerProtocol(self), path)
        os.chmod(path, mode)
        self.path = path

    async def close(self) -> None:
        """Stop listening, drop every connection, remove the socket file."""
        if self._server is not None:
            self._server.close()
            for proto in list(self._protocols):
                proto.close()
            await self._server.wait_closed()
            self._server = None
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _dispatch(self, req: RequestReceived) -> tuple[int, str, bytes]:
        handler = self._handlers.get((req.service, req.method))
        if handler is None:
            return Code.UNIMPLEMENTED, f"{req.service}/{req.method} is not served here", b""
        timeout = self.handler_timeout
        if req.timeout_ns > 0:
            timeout = min(timeout, req.timeout_ns / 1e9)
        ctx = CallContext(req.service, req.method, req.metadata)
        try:
            async with asyncio.timeout(timeout):
                return Code.OK, "", await handler(req.payload, ctx)
        except TimeoutError:
            return Code.DEADLINE_EXCEEDED, f"{req.service}/{req.method}: deadline exceeded", b""
        except _BadRequest as e:
            return Code.INVALID_ARGUMENT, str(e), b""
        except TTRPCError as e:
            return e.code, e.message, b""
        except Exception:
            log.exception("ttrpc: handler %s/%s failed", req.service, req.method)
            return Code.INTERNAL, f"{req.service}/{req.method}: internal error", b""


class _BadRequest(Exception):
    pass
