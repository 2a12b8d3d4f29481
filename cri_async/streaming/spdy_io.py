"""Drives a SpdyConnection over an asyncio stream pair: one reader task per connection,
streams with awaitable read/write.

Memory stays bounded whatever the peer does: received data waits in per-stream buffers,
and the reader stops taking bytes off the socket while any stream holds more than
``stream_buffer`` bytes or all of them together more than ``connection_buffer`` (TCP then
pushes back on the peer; a flow-controlling peer never gets that far, because the windows
we grant are no larger). Writers wait for send window (when the peer enforces it) and for
the transport to drain. The byte pair is an asyncio stream pair, or anything shaped like
one (``ByteReader``/``ByteWriter``: the WebSocket tunnel of ``ws_tunnel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from cri_async.streaming import spdy_frames as f
from cri_async.streaming import spdy_session as s

log = logging.getLogger("cri_async.streaming.spdy")

READ_CHUNK = 256 * 1024
REPLY_TIMEOUT = 30.0


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Abortable(Protocol):
    def abort(self) -> None: ...


class ByteWriter(Protocol):
    """What SpdyEndpoint uses of an ``asyncio.StreamWriter``."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...
    @property
    def transport(self) -> Abortable: ...


class StreamError(ConnectionError):
    """The stream was reset or the connection is gone."""


class SpdyStream:
    def __init__(self, endpoint: SpdyEndpoint, stream_id: int, headers: f.Headers) -> None:
        self.endpoint = endpoint
        self.stream_id = stream_id
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self._eof = False  # the peer half-closed, reset, or the connection ended
        self.reset_status: int | None = None
        self.local_closed = False
        self._readable = asyncio.Event()
        self.replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def header(self, name: str) -> str | None:
        return f.header_value(self.headers, name)

    @property
    def remote_closed(self) -> bool:
        return self._eof

    # -- called by the endpoint -----------------------------------------------------------
    def _push(self, data: bytes, fin: bool) -> None:
        if data and self.reset_status is None:
            self._chunks.append(data)
            self.buffered += len(data)
            self.endpoint._account(self, len(data))
        if fin:
            self._eof = True
        self._readable.set()

    def _gone(self, status: int | None) -> None:
        if status is not None and self.reset_status is None:
            self.reset_status = status
        self._eof = True
        self.local_closed = True
        self._readable.set()
        if not self.replied.done():
            self.replied.set_exception(StreamError(f"stream {self.stream_id} was reset"))
            self.replied.exception()  # retrieved: nobody may be waiting for it

    # -- application side -----------------------------------------------------------------
    async def read(self) -> bytes:
        """The next received bytes; b"" once the peer half-closed or reset the stream, or
        the connection ended."""
        while not self._chunks:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self.buffered -= len(data)
        self.endpoint._consumed(self, len(data))
        return data

    def reply(self) -> None:
        """Accept a stream the peer opened (SYN_REPLY with an empty header block)."""
        self.endpoint._call(lambda c: c.reply(self.stream_id))
        if not self.replied.done():
            self.replied.set_result(None)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        ep = self.endpoint
        while view:
            if self.local_closed or ep.lost or not ep.conn.is_open(self.stream_id):
                raise StreamError(f"stream {self.stream_id} is closed")
            cap = ep.conn.send_capacity(self.stream_id)
            if cap == 0:
                await ep._window_opened()
                continue
            n = ep.conn.send_data(self.stream_id, bytes(view[:cap]))
            ep._flush()
            view = view[n:]
            await ep.drain()

    def end(self) -> None:
        """Half-close our side (FIN). A no-op when already closed or reset."""
        if self.local_closed:
            return
        self.local_closed = True
        if self.endpoint.conn.is_open(self.stream_id):
            self.endpoint._call(lambda c: c.end_stream(self.stream_id))

    def reset(self, status: int = f.RstStatus.CANCEL) -> None:
        """RST, unless we already FIN'd (then the stream ends on its own). Received data
        still buffered is dropped."""
        if not self.local_closed:
            self.endpoint._call(lambda c: c.reset(self.stream_id, status))
        self.endpoint._drop(self)
        self._gone(None)


class SpdyEndpoint:
    """``async with SpdyEndpoint(...)`` runs the reader; leaving closes the connection."""

    def __init__(
        self,
        conn: s.SpdyConnection,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        idle_timeout: float,
        initial_data: bytes = b"",
        stream_buffer: int = s.DEFAULT_WINDOW,
        connection_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.idle_timeout = idle_timeout
        self._initial = initial_data
        # Never below what we granted: a peer within its windows must not stall the reader
        # (our sends may be waiting for the WINDOW_UPDATE behind its data).
        granted_stream, granted_session = conn.granted_windows
        self._stream_cap = max(stream_buffer, granted_stream)
        self._conn_cap = max(connection_buffer, granted_session)
        self.streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._window = asyncio.Event()
        self.closed = asyncio.Event()  # the reader ended: peer EOF, error, idle or GOAWAY'd
        self.lost = False  # no more writes possible
        self.goaway_received = False
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._last = loop.time()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the reader (``async with`` does this)."""
        self._flush()
        self._task = asyncio.create_task(self._run(), name="spdy-reader")

    async def __aenter__(self) -> SpdyEndpoint:
        self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose(grace=0.0 if e is not None else 2.0)
        except asyncio.CancelledError:
            self.abort()
            raise

    # -- plumbing -------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.lost:
            try:
                self.writer.write(data)
            except (ConnectionError, RuntimeError):
                self._lose()
            self._last = self._loop.time()

    def _call(self, fn: Callable[[s.SpdyConnection], object]) -> None:
        if self.lost or self.conn.terminated:
            return
        try:
            fn(self.conn)
        except s.StreamClosedError:
            return
        self._flush()

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self._lose()
            raise StreamError("connection lost") from e

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self._window.set()

    async def _window_opened(self) -> None:
        self._window.clear()
        await self._window.wait()

    def _account(self, stream: SpdyStream, n: int) -> None:
        self._buffered += n
        if self._buffered > self._conn_cap or stream.buffered > self._stream_cap:
            self._room.clear()

    def _consumed(self, stream: SpdyStream, n: int) -> None:
        self._buffered -= n
        self._call(lambda c: c.consumed(stream.stream_id, n))
        self._recheck_room()

    def _recheck_room(self) -> None:
        if self._room.is_set() or self._buffered > self._conn_cap:
            return
        if all(st.buffered <= self._stream_cap for st in self.streams.values()):
            self._room.set()

    def _drop(self, stream: SpdyStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if stream.buffered:
            self._buffered -= stream.buffered
            self.conn.consumed(stream.stream_id, stream.buffered)
            stream.buffered = 0
            stream._chunks.clear()
            self._flush()
        self._recheck_room()

    # -- reader ---------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            if self._initial:
                self._feed(self._initial)
            while not self.conn.terminated:
                await self._room.wait()
                data = await self._read()
                if not data:
                    break
                self._feed(data)
        except TimeoutError:
            log.debug("spdy connection idle for %.0f s, closing", self.idle_timeout)
        except (ConnectionError, OSError) as e:
            log.debug("spdy connection lost: %s", e)
        finally:
            self._finish()

    async def _read(self) -> bytes:
        while True:
            remaining = self._last + self.idle_timeout - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                async with asyncio.timeout(remaining):
                    data = await self.reader.read(READ_CHUNK)
            except TimeoutError:
                continue  # re-check: a write may have counted as activity meanwhile
            self._last = self._loop.time()
            return data

    def _feed(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            match ev:
                case s.DataReceived(sid, chunk, fin):
                    st = self.streams.get(sid)
                    if st is not None:
                        st._push(chunk, fin)
                    else:
                        self.conn.consumed(sid, len(chunk))
                case s.StreamOpened(sid, headers, fin):
                    st = SpdyStream(self, sid, headers)
                    self.streams[sid] = st
                    if fin:
                        st._push(b"", True)
                    self._incoming.put_nowait(st)
                case s.StreamReplied(sid, _, fin):
                    st = self.streams.get(sid)
                    if st is not None:
                        if not st.replied.done():
                            st.replied.set_result(None)
                        if fin:
                            st._push(b"", True)
                case s.HeadersReceived(sid, _, fin):
                    st = self.streams.get(sid)
                    if st is not None and fin:
                        st._push(b"", True)
                case s.StreamReset(sid, status):
                    st = self.streams.pop(sid, None)
                    if st is not None:
                        self._buffered -= st.buffered
                        st._gone(status)
                        self._recheck_room()
                        self._window.set()  # a writer waiting for window must see it
                case s.WindowUpdated():
                    self._window.set()
                case s.GoAwayReceived():
                    self.goaway_received = True
                case s.ConnectionTerminated(_, reason):
                    log.info("spdy connection ended: %s", reason)
                case s.PingAcknowledged():
                    pass
        self._flush()

    def _finish(self) -> None:
        self.closed.set()
        for st in list(self.streams.values()):
            st._eof = True
            st._readable.set()
            if not st.replied.done():
                st._gone(None)
        self._incoming.put_nowait(None)
        self._window.set()

    # -- application side -----------------------------------------------------------------
    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened; None once the connection has ended."""
        st = await self._incoming.get()
        if st is None:
            self._incoming.put_nowait(None)  # keep answering None
        return st

    async def open_stream(self, headers: f.Headers, timeout: float = REPLY_TIMEOUT) -> SpdyStream:
        """Open a stream and wait for the peer's SYN_REPLY (client side)."""
        if self.lost or self.closed.is_set():
            raise StreamError("connection is closed")
        try:
            sid = self.conn.open_stream(headers)
        except s.StreamClosedError as e:
            raise StreamError(str(e)) from None
        st = SpdyStream(self, sid, headers)
        self.streams[sid] = st
        self._flush()
        await self.drain()
        async with asyncio.timeout(timeout):
            await st.replied
        return st

    def abort(self) -> None:
        """Close now, without goodbyes (cancellation path)."""
        self._lose()
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()

    async def aclose(self, *, grace: float = 2.0) -> None:
        """GOAWAY, then let the peer close first (up to ``grace`` seconds) so nothing we
        sent is lost to a TCP reset, then close. Idempotent."""
        if not self.lost:
            self.conn.goaway()
            self._flush()
            if grace > 0:
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(grace):
                        await self.drain()
                        if self.writer.can_write_eof():
                            self.writer.write_eof()
                        await self.closed.wait()
            self._lose()
        self.writer.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
