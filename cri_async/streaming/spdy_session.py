"""A SPDY/3.1 connection as a state machine (sans-I/O): bytes in, events out; calls in,
bytes out.

It owns stream bookkeeping (ids, half-closes, resets), PING echo, GOAWAY, and flow control:
both windows (per stream and per session) are always counted in both directions, and
WINDOW_UPDATEs are sent as the application consumes data. The *send* windows are enforced
only once the peer has shown that it speaks SPDY/3.1 flow control (a SETTINGS with
INITIAL_WINDOW_SIZE, or any WINDOW_UPDATE): the Go implementation behind kubectl, crictl and
kubelet never sends either and never grants window, so enforcing the 64 KiB default against
it would stall every transfer. Against such a peer, only TCP (and the adapter's bounded
buffers) push back.

Malformed input never raises: the connection queues GOAWAY(PROTOCOL_ERROR), reports
``ConnectionTerminated`` and ignores everything after it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cri_async.streaming import spdy_frames as f

DEFAULT_WINDOW = 64 * 1024
MAX_DATA_FRAME = 32 * 1024  # what client-go sends; keeps one stream from hogging the socket
MAX_STREAMS = 1000


class Role(enum.Enum):
    CLIENT = "client"  # opens odd stream ids
    SERVER = "server"


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int
    headers: f.Headers
    fin: bool


@dataclass(frozen=True, slots=True)
class StreamReplied:
    stream_id: int
    headers: f.Headers
    fin: bool


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    stream_id: int
    headers: f.Headers
    fin: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Stream data (possibly empty) and whether the peer half-closed after it. The
    application reports bytes it has taken with ``consumed()``, which reopens the window."""

    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """Send capacity may have grown: for one stream, or for all (stream_id 0)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """We ended the connection (bad input); GOAWAY is queued, nothing more is accepted."""

    status: int
    reason: str


Event = (
    StreamOpened
    | StreamReplied
    | HeadersReceived
    | DataReceived
    | StreamReset
    | WindowUpdated
    | PingAcknowledged
    | GoAwayReceived
    | ConnectionTerminated
)


class StreamClosedError(Exception):
    """Writing to a stream that is reset, unknown, or already half-closed by us."""


class _Stream:
    __slots__ = (
        "local_closed",
        "recv_window",
        "remote_closed",
        "replied",
        "send_window",
        "unacked",
    )

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.local_closed = False
        self.remote_closed = False
        self.replied = False


class SpdyConnection:
    def __init__(
        self,
        role: Role,
        *,
        initial_window: int = DEFAULT_WINDOW,
        session_window: int = DEFAULT_WINDOW,
        max_streams: int = MAX_STREAMS,
        max_data_frame: int = MAX_DATA_FRAME,
        flow_control: bool = True,
    ) -> None:
        """``flow_control=False`` behaves as Go's spdystream: it never sends SETTINGS or
        WINDOW_UPDATE (the windows are still counted, and still honoured if the peer
        grants them)."""
        if not DEFAULT_WINDOW <= session_window <= f.MAX_WINDOW:
            raise ValueError("session_window must be within 64 KiB .. 2^31-1")
        if not 1 <= initial_window <= f.MAX_WINDOW:
            raise ValueError("initial_window must be within 1 .. 2^31-1")
        self.role = role
        self._enc = f.FrameEncoder()
        self._dec = f.FrameDecoder()
        self._out = bytearray()
        self._streams: dict[int, _Stream] = {}
        self._max_streams = max_streams
        self._max_frame = max_data_frame
        self._next_id = 1 if role is Role.CLIENT else 2
        self._next_ping = 1 if role is Role.CLIENT else 2
        self._pings: set[int] = set()
        self.last_peer_stream = 0
        self.terminated = False
        self.goaway_sent = False
        self.goaway_received = False
        # Flow control. The peer's windows start at the SPDY default until its SETTINGS.
        self.peer_flow_control = False
        self._peer_initial = DEFAULT_WINDOW
        self._send_session = DEFAULT_WINDOW
        self._recv_initial = initial_window
        self._recv_session_size = session_window
        self._recv_session = session_window
        self._session_unacked = 0
        self._grants = flow_control
        if not flow_control:
            initial_window = session_window = f.MAX_WINDOW
            self._recv_initial = self._recv_session_size = self._recv_session = f.MAX_WINDOW
        elif initial_window != DEFAULT_WINDOW:
            setting = f.Setting(f.SettingId.INITIAL_WINDOW_SIZE, initial_window)
            self._emit(f.Settings((setting,)))
        if flow_control and session_window > DEFAULT_WINDOW:
            self._emit(f.WindowUpdate(0, session_window - DEFAULT_WINDOW))

    @property
    def granted_windows(self) -> tuple[int, int]:
        """(per stream, per session): what a flow-controlling peer may have in flight to
        us, so what we must be ready to buffer; (0, 0) when we grant nothing."""
        if not self._grants:
            return 0, 0
        return self._recv_initial, self._recv_session_size

    # -- output ---------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _emit(self, frame: f.Frame) -> None:
        self._out += self._enc.encode(frame)

    # -- input ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.terminated:
            return []
        try:
            frames = self._dec.feed(data)
        except f.FrameError as e:
            # Frames decoded before the bad one were lost with the exception; the
            # connection is over anyway.
            return [self._terminate(f.GoAwayStatus.PROTOCOL_ERROR, str(e))]
        events: list[Event] = []
        for frame in frames:
            self._handle(frame, events)
            if self.terminated:
                break
        return events

    def _terminate(self, status: int, reason: str) -> ConnectionTerminated:
        if not self.goaway_sent:
            self._emit(f.GoAway(self.last_peer_stream, status))
            self.goaway_sent = True
        self.terminated = True
        self._streams.clear()
        return ConnectionTerminated(status, reason)

    def _peer_opens(self, stream_id: int) -> bool:
        """Whether ``stream_id`` belongs to the peer's id space."""
        odd = stream_id % 2 == 1
        return odd if self.role is Role.SERVER else not odd

    def _handle(self, frame: f.Frame, events: list[Event]) -> None:
        match frame:
            case f.Data():
                self._on_data(frame, events)
            case f.SynStream():
                self._on_syn_stream(frame, events)
            case f.SynReply(sid, headers, fin):
                st = self._streams.get(sid)
                if st is None or self._peer_opens(sid):
                    return  # a reply for a stream we reset meanwhile, or nonsense
                if st.replied:
                    self._rst(sid, f.RstStatus.STREAM_IN_USE)
                    self._streams.pop(sid, None)
                    events.append(StreamReset(sid, f.RstStatus.STREAM_IN_USE))
                    return
                st.replied = True
                events.append(StreamReplied(sid, headers, fin))
                if fin:
                    self._remote_close(sid, st)
            case f.HeadersFrame(sid, headers, fin):
                st = self._streams.get(sid)
                if st is None:
                    return
                events.append(HeadersReceived(sid, headers, fin))
                if fin:
                    self._remote_close(sid, st)
            case f.RstStream(sid, status):
                if self._streams.pop(sid, None) is not None:
                    events.append(StreamReset(sid, status))
            case f.Settings(entries):
                for e in entries:
                    if e.id == f.SettingId.INITIAL_WINDOW_SIZE:
                        if e.value > f.MAX_WINDOW:
                            events.append(
                                self._terminate(
                                    f.GoAwayStatus.PROTOCOL_ERROR, "INITIAL_WINDOW_SIZE > 2^31-1"
                                )
                            )
                            return
                        delta = e.value - self._peer_initial
                        self._peer_initial = e.value
                        for st in self._streams.values():
                            st.send_window += delta
                        self.peer_flow_control = True
                        events.append(WindowUpdated(0))
            case f.Ping(ping_id):
                if (ping_id % 2 == 1) == (self.role is Role.SERVER):
                    self._emit(f.Ping(ping_id))  # the peer's ping: echo it unchanged
                elif ping_id in self._pings:
                    self._pings.discard(ping_id)
                    events.append(PingAcknowledged(ping_id))
            case f.GoAway(last_good, status):
                self.goaway_received = True
                events.append(GoAwayReceived(last_good, status))
            case f.WindowUpdate(sid, delta):
                self.peer_flow_control = True
                if sid == 0:
                    self._send_session += delta
                    if self._send_session > f.MAX_WINDOW:
                        events.append(
                            self._terminate(
                                f.GoAwayStatus.PROTOCOL_ERROR, "session window above 2^31-1"
                            )
                        )
                        return
                    events.append(WindowUpdated(0))
                    return
                st = self._streams.get(sid)
                if st is None:
                    return
                st.send_window += delta
                if st.send_window > f.MAX_WINDOW:
                    self._rst(sid, f.RstStatus.FLOW_CONTROL_ERROR)
                    self._streams.pop(sid, None)
                    events.append(StreamReset(sid, f.RstStatus.FLOW_CONTROL_ERROR))
                    return
                events.append(WindowUpdated(sid))

    def _on_syn_stream(self, frame: f.SynStream, events: list[Event]) -> None:
        sid = frame.stream_id
        if not self._peer_opens(sid):
            # Server push (or a client reusing our id space): not supported.
            self._rst(sid, f.RstStatus.REFUSED_STREAM)
            return
        if sid <= self.last_peer_stream:
            self._rst(sid, f.RstStatus.PROTOCOL_ERROR)
            return
        self.last_peer_stream = sid
        if self.goaway_sent or len(self._streams) >= self._max_streams:
            self._rst(sid, f.RstStatus.REFUSED_STREAM)
            return
        st = _Stream(self._peer_initial, self._recv_initial)
        self._streams[sid] = st
        events.append(StreamOpened(sid, frame.headers, frame.fin))
        if frame.fin or frame.unidirectional:
            st.remote_closed = True

    def _on_data(self, frame: f.Data, events: list[Event]) -> None:
        sid, n = frame.stream_id, len(frame.data)
        self._recv_session -= n
        if self.peer_flow_control and self._recv_session < 0:
            events.append(
                self._terminate(f.GoAwayStatus.PROTOCOL_ERROR, "peer overran the session window")
            )
            return
        st = self._streams.get(sid)
        if st is None:
            # Late data for a stream that is gone (we reset it, or it closed): dropped,
            # but the session window it used is handed back.
            self._credit_session(n)
            return
        if st.remote_closed:
            self._credit_session(n)
            self._rst(sid, f.RstStatus.STREAM_ALREADY_CLOSED)
            self._streams.pop(sid, None)
            events.append(StreamReset(sid, f.RstStatus.STREAM_ALREADY_CLOSED))
            return
        if not self._peer_opens(sid) and not st.replied:
            # Go drops data that precedes SYN_REPLY; so do we, rather than guess.
            self._credit_session(n)
            return
        st.recv_window -= n
        if self.peer_flow_control and st.recv_window < 0:
            self._credit_session(n)
            self._rst(sid, f.RstStatus.FLOW_CONTROL_ERROR)
            self._streams.pop(sid, None)
            events.append(StreamReset(sid, f.RstStatus.FLOW_CONTROL_ERROR))
            return
        events.append(DataReceived(sid, frame.data, frame.fin))
        if frame.fin:
            self._remote_close(sid, st)

    def _remote_close(self, sid: int, st: _Stream) -> None:
        st.remote_closed = True
        if st.local_closed:
            self._streams.pop(sid, None)

    def _rst(self, sid: int, status: int) -> None:
        self._emit(f.RstStream(sid, status))

    # -- flow control -------------------------------------------------------------------
    def _credit_session(self, n: int) -> None:
        if n <= 0:
            return
        self._recv_session += n
        self._session_unacked += n
        if self._grants and self._session_unacked >= self._recv_session_size // 2:
            self._emit(f.WindowUpdate(0, self._session_unacked))
            self._session_unacked = 0

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took ``n`` bytes of ``stream_id``'s data: reopen the windows."""
        self._credit_session(n)
        st = self._streams.get(stream_id)
        if st is None or st.remote_closed or n <= 0 or self.terminated:
            return
        st.recv_window += n
        st.unacked += n
        if self._grants and st.unacked >= self._recv_initial // 2:
            self._emit(f.WindowUpdate(stream_id, st.unacked))
            st.unacked = 0

    def send_capacity(self, stream_id: int) -> int:
        """How many bytes ``send_data`` would take now (0: wait for WindowUpdated)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            return 0
        if not self.peer_flow_control:
            return f.MAX_WINDOW
        return max(0, min(st.send_window, self._send_session))

    # -- calls ----------------------------------------------------------------------------
    def open_stream(self, headers: f.Headers, *, fin: bool = False) -> int:
        if self.terminated or self.goaway_received or self.goaway_sent:
            raise StreamClosedError("connection is going away")
        sid = self._next_id
        if sid > f.MAX_STREAM_ID:
            raise StreamClosedError("stream ids exhausted")
        self._next_id += 2
        st = _Stream(self._peer_initial, self._recv_initial)
        st.local_closed = fin
        self._streams[sid] = st
        self._emit(f.SynStream(sid, headers, fin=fin))
        return sid

    def reply(self, stream_id: int, headers: f.Headers = (), *, fin: bool = False) -> None:
        st = self._live(stream_id)
        if st.replied:
            raise StreamClosedError(f"stream {stream_id} already has its reply")
        st.replied = True
        self._emit(f.SynReply(stream_id, headers, fin=fin))
        if fin:
            self._local_close(stream_id, st)

    def send_data(self, stream_id: int, data: bytes, *, fin: bool = False) -> int:
        """Frame as much of ``data`` as the windows allow; FIN only if all of it went.
        Returns the number of bytes taken."""
        st = self._live(stream_id)
        n = min(len(data), self.send_capacity(stream_id))
        view = memoryview(data)
        for pos in range(0, n, self._max_frame):
            chunk = view[pos : min(n, pos + self._max_frame)]
            last = pos + self._max_frame >= n
            self._out += f.data_header(stream_id, len(chunk), fin and last and n == len(data))
            self._out += chunk
        st.send_window -= n
        self._send_session -= n
        if fin and n == len(data):
            if n == 0:
                self._out += f.data_header(stream_id, 0, True)
            self._local_close(stream_id, st)
        return n

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (an empty DATA frame with FIN)."""
        self.send_data(stream_id, b"", fin=True)

    def reset(self, stream_id: int, status: int = f.RstStatus.CANCEL) -> None:
        """RST a stream we still know; a no-op for streams already gone."""
        if self.terminated or self._streams.pop(stream_id, None) is None:
            return
        self._rst(stream_id, status)

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def ping(self) -> int:
        ping_id = self._next_ping
        self._next_ping = (self._next_ping + 2) & 0xFFFFFFFF or (
            1 if self.role is Role.CLIENT else 2
        )
        self._pings.add(ping_id)
        self._emit(f.Ping(ping_id))
        return ping_id

    def goaway(self, status: int = f.GoAwayStatus.OK) -> None:
        if not self.goaway_sent and not self.terminated:
            self._emit(f.GoAway(self.last_peer_stream, status))
            self.goaway_sent = True

    def _live(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None or self.terminated:
            raise StreamClosedError(f"stream {stream_id} is closed")
        if st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is half-closed")
        return st

    def _local_close(self, stream_id: int, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            self._streams.pop(stream_id, None)
