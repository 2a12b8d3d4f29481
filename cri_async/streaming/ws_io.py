"""Drives a wsproto connection (after the HTTP upgrade) over an asyncio stream pair: one
reader task that reassembles messages, answers pings and the closing handshake.

Received messages wait in a bounded queue; while it is full the reader stops taking bytes
off the socket, so a peer that sends faster than we consume is held back by TCP. A message
larger than ``max_message`` closes the connection with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType

from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

log = logging.getLogger("cri_async.streaming.websocket")

READ_CHUNK = 256 * 1024
MAX_MESSAGE = 4 * 1024 * 1024
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011


class WebSocketClosed(ConnectionError):
    pass


class WebSocketEndpoint:
    """``async with WebSocketEndpoint(...)`` runs the reader; leaving closes (1000)."""

    def __init__(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_timeout: float,
        max_message: int = MAX_MESSAGE,
        queue_size: int = 16,
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.idle_timeout = idle_timeout
        self.max_message = max_message
        self._messages: deque[bytes | str] = deque()
        self._queue_size = queue_size
        self._has_message = asyncio.Event()
        self._has_room = asyncio.Event()
        self._discarding = False  # closing: nobody reads messages any more
        self.closed = asyncio.Event()  # the reader ended
        self.close_code: int | None = None  # what the peer's close frame said
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the reader (``async with`` does this)."""
        self._task = asyncio.create_task(self._run(), name="websocket-reader")

    async def __aenter__(self) -> WebSocketEndpoint:
        self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose(
                CLOSE_NORMAL if e is None else CLOSE_INTERNAL, grace=0.0 if e else 2.0
            )
        except asyncio.CancelledError:
            self.abort()
            raise

    # -- writing --------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.lost:
            raise WebSocketClosed("connection lost")
        try:
            self.writer.write(data)
        except (ConnectionError, RuntimeError) as e:
            self.lost = True
            raise WebSocketClosed("connection lost") from e
        self._last = self._loop.time()

    def _send_event(self, event: Event) -> None:
        try:
            data = self.conn.send(event)
        except LocalProtocolError as e:  # closing or closed
            raise WebSocketClosed(str(e)) from None
        self._write(data)

    async def send(self, message: bytes | str) -> None:
        """One message: bytes as a binary message, str as a text message."""
        if isinstance(message, str):
            self._send_event(TextMessage(data=message))
        else:
            self._send_event(BytesMessage(data=message))
        await self.drain()

    def send_nowait(self, data: bytes) -> None:
        """A binary message, handed to the transport now (``drain`` waits for room)."""
        self._send_event(BytesMessage(data=data))

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self.lost = True
            raise WebSocketClosed("connection lost") from e

    # -- reading --------------------------------------------------------------------------
    async def receive(self) -> bytes | str | None:
        """The next whole message; None once the connection is closing or closed."""
        while not self._messages:
            if self.closed.is_set() or self._discarding:
                return None
            self._has_message.clear()
            await self._has_message.wait()
        self._has_room.set()
        return self._messages.popleft()

    async def _deliver(self, msg: bytes | str) -> None:
        while len(self._messages) >= self._queue_size and not self._discarding:
            self._has_room.clear()
            await self._has_room.wait()
        if not self._discarding:
            self._messages.append(msg)
            self._has_message.set()

    async def _run(self) -> None:
        try:
            await self._read_loop()
        except TimeoutError:
            log.debug("websocket idle for %.0f s, closing", self.idle_timeout)
        except (ConnectionError, OSError) as e:
            log.debug("websocket connection lost: %s", e)
        finally:
            self.closed.set()
            self._has_message.set()

    async def _read(self) -> bytes:
        while True:
            remaining = self._last + self.idle_timeout - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                async with asyncio.timeout(remaining):
                    data = await self.reader.read(READ_CHUNK)
            except TimeoutError:
                continue
            self._last = self._loop.time()
            return data

    async def _read_loop(self) -> None:
        parts: list[bytes | str] = []
        size = 0
        while True:
            # Events first: bytes that came with the upgrade request are already fed.
            for ev in self.conn.events():
                match ev:
                    case BytesMessage() | TextMessage():
                        size += len(ev.data)
                        if size > self.max_message:
                            log.info("websocket message over %d bytes, closing", self.max_message)
                            self._close_now(CLOSE_TOO_BIG)
                            return
                        parts.append(bytes(ev.data) if isinstance(ev, BytesMessage) else ev.data)
                        if ev.message_finished:
                            msg: bytes | str = (
                                "".join(p for p in parts if isinstance(p, str))
                                if isinstance(ev, TextMessage)
                                else b"".join(p for p in parts if isinstance(p, bytes))
                            )
                            parts, size = [], 0
                            await self._deliver(msg)
                    case Ping():
                        with contextlib.suppress(WebSocketClosed):
                            self._send_event(ev.response())
                    case CloseConnection():
                        self.close_code = ev.code
                        if self.conn.state is ConnectionState.REMOTE_CLOSING:
                            with contextlib.suppress(WebSocketClosed):
                                self._send_event(ev.response())
                        return
            if self.conn.state is ConnectionState.CLOSED:
                return
            data = await self._read()
            self.conn.receive_data(data or None)

    def _close_now(self, code: int) -> None:
        with contextlib.suppress(WebSocketClosed):
            self._send_event(CloseConnection(code=code))

    # -- closing --------------------------------------------------------------------------
    def abort(self) -> None:
        self.lost = True
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()

    async def aclose(self, code: int = CLOSE_NORMAL, *, grace: float = 2.0) -> None:
        """Send a close frame and wait (up to ``grace``) for the peer's, then close the
        socket. Idempotent."""
        self._discarding = True
        self._messages.clear()
        self._has_room.set()
        self._has_message.set()
        if not self.lost and self.conn.state is ConnectionState.OPEN:
            with contextlib.suppress(WebSocketClosed):
                self._send_event(CloseConnection(code=code))
        if not self.lost and grace > 0:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                async with asyncio.timeout(grace):
                    await self.writer.drain()
                    await self.closed.wait()
        self.lost = True
        self.writer.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
