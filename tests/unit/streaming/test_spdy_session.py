"""The sans-I/O SPDY connection: stream rules, PING echo, GOAWAY, malformed input ending
the connection cleanly, and flow control (windows counted always, enforced on sends only
once the peer speaks it; WINDOW_UPDATEs as data is consumed)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from cri_async.streaming import spdy_frames as f
from cri_async.streaming import spdy_session as s


def pair(**server_kw: object) -> tuple[s.SpdyConnection, s.SpdyConnection]:
    client = s.SpdyConnection(s.Role.CLIENT)
    server = s.SpdyConnection(s.Role.SERVER, **server_kw)  # type: ignore[arg-type]
    return client, server


def frames_of(raw: bytes) -> list[f.Frame]:
    return f.FrameDecoder().feed(raw)


def test_open_reply_data_fin_both_ways() -> None:
    client, server = pair()
    sid = client.open_stream((("streamtype", "stdout"),))
    assert sid == 1
    ev = server.receive_data(client.data_to_send())
    assert ev == [s.StreamOpened(1, (("streamtype", "stdout"),), False)]
    server.reply(1)
    server.send_data(1, b"hello", fin=True)
    ev = client.receive_data(server.data_to_send())
    assert ev == [s.StreamReplied(1, (), False), s.DataReceived(1, b"hello", True)]
    client.end_stream(1)
    assert server.receive_data(client.data_to_send()) == [s.DataReceived(1, b"", True)]
    assert not server.is_open(1)  # both halves closed: forgotten
    assert client.open_stream(()) == 3  # odd, increasing


def test_ping_from_peer_is_echoed_and_own_ping_acknowledged() -> None:
    client, server = pair()
    pid = client.ping()
    assert pid % 2 == 1
    assert server.receive_data(client.data_to_send()) == []
    echo = server.data_to_send()
    assert frames_of(echo) == [f.Ping(pid)]
    assert client.receive_data(echo) == [s.PingAcknowledged(pid)]


def test_stream_ids_must_increase_and_be_the_peers() -> None:
    _, server = pair()
    enc = f.FrameEncoder()
    raw = enc.encode(f.SynStream(5, ())) + enc.encode(f.SynStream(3, ()))
    raw += enc.encode(f.SynStream(6, ()))  # even: the server's id space
    ev = server.receive_data(raw)
    assert ev == [s.StreamOpened(5, (), False)]
    assert frames_of(server.data_to_send()) == [
        f.RstStream(3, f.RstStatus.PROTOCOL_ERROR),
        f.RstStream(6, f.RstStatus.REFUSED_STREAM),
    ]


def test_malformed_input_sends_goaway_and_ignores_the_rest() -> None:
    client, server = pair()
    client.open_stream(())
    server.receive_data(client.data_to_send())
    bad = struct.pack(">HHI", 0x8003, 6, 5) + b"\x00\x00\x00\x01\x00"  # PING of length 5
    ev = server.receive_data(bad)
    assert len(ev) == 1
    assert isinstance(ev[0], s.ConnectionTerminated)
    assert ev[0].status == f.GoAwayStatus.PROTOCOL_ERROR
    assert frames_of(server.data_to_send()) == [f.GoAway(1, f.GoAwayStatus.PROTOCOL_ERROR)]
    assert server.receive_data(f.FrameEncoder().encode(f.Ping(1))) == []
    assert server.data_to_send() == b""


def test_goaway_refuses_new_streams() -> None:
    client, server = pair()
    client.open_stream(())
    server.receive_data(client.data_to_send())
    server.goaway()
    assert frames_of(server.data_to_send()) == [f.GoAway(1, f.GoAwayStatus.OK)]
    client.open_stream(())
    assert server.receive_data(client.data_to_send()) == []
    assert frames_of(server.data_to_send()) == [f.RstStream(3, f.RstStatus.REFUSED_STREAM)]


def test_data_before_syn_reply_is_dropped() -> None:
    client, server = pair()
    client.open_stream(())
    server.receive_data(client.data_to_send())
    raw = f.FrameEncoder().encode(f.Data(1, b"early"))
    assert client.receive_data(raw) == []


def test_reset_drops_late_data_silently() -> None:
    client, server = pair()
    client.open_stream(())
    server.receive_data(client.data_to_send())
    server.reply(1)
    server.reset(1)
    assert frames_of(server.data_to_send())[-1] == f.RstStream(1, f.RstStatus.CANCEL)
    client.send_data(1, b"late")
    assert server.receive_data(client.data_to_send()) == []
    assert server.data_to_send() == b""


def test_without_peer_flow_control_sends_are_not_window_limited() -> None:
    # What Go's spdystream is: it never sends SETTINGS or WINDOW_UPDATE.
    go_client = s.SpdyConnection(s.Role.CLIENT, flow_control=False)
    server = s.SpdyConnection(s.Role.SERVER)
    go_client.open_stream(())
    server.receive_data(go_client.data_to_send())
    server.reply(1)
    big = b"x" * 500_000
    assert server.send_data(1, big) == len(big)
    data = server.data_to_send()
    got = [fr for fr in frames_of(data) if isinstance(fr, f.Data)]
    assert b"".join(fr.data for fr in got) == big
    assert max(len(fr.data) for fr in got) <= s.MAX_DATA_FRAME
    # and the Go-like side never grants window, however much it consumes
    go_client.receive_data(data)
    go_client.consumed(1, len(big))
    assert not any(isinstance(fr, f.WindowUpdate) for fr in frames_of(go_client.data_to_send()))


def test_windows_are_enforced_once_the_peer_grants_them() -> None:
    client = s.SpdyConnection(s.Role.CLIENT, initial_window=100_000, session_window=200_000)
    server = s.SpdyConnection(s.Role.SERVER)
    sid = client.open_stream(())
    hello = client.data_to_send()
    assert frames_of(hello)[:2] == [
        f.Settings((f.Setting(f.SettingId.INITIAL_WINDOW_SIZE, 100_000),)),
        f.WindowUpdate(0, 200_000 - s.DEFAULT_WINDOW),
    ]
    server.receive_data(hello)
    assert server.peer_flow_control
    server.reply(sid)
    assert server.send_capacity(sid) == 100_000
    assert server.send_data(sid, b"y" * 150_000) == 100_000
    assert server.send_capacity(sid) == 0
    ev = client.receive_data(server.data_to_send())
    assert sum(len(e.data) for e in ev if isinstance(e, s.DataReceived)) == 100_000
    # consuming half the window grants it back
    client.consumed(sid, 40_000)
    assert client.data_to_send() == b""
    client.consumed(sid, 10_000)
    updates = [fr for fr in frames_of(client.data_to_send()) if isinstance(fr, f.WindowUpdate)]
    assert updates == [f.WindowUpdate(sid, 50_000)]
    assert server.receive_data(f.FrameEncoder().encode(updates[0])) == [s.WindowUpdated(sid)]
    assert server.send_capacity(sid) == 50_000


def test_session_window_limits_all_streams_together() -> None:
    client = s.SpdyConnection(s.Role.CLIENT, initial_window=1_000_000)
    server = s.SpdyConnection(s.Role.SERVER)
    a, b = client.open_stream(()), client.open_stream(())
    server.receive_data(client.data_to_send())
    server.reply(a)
    server.reply(b)
    assert server.send_data(a, b"a" * 40_000) == 40_000
    assert server.send_capacity(b) == s.DEFAULT_WINDOW - 40_000
    assert server.send_data(b, b"b" * 40_000) == s.DEFAULT_WINDOW - 40_000


def test_overrunning_a_granted_window_resets_the_stream() -> None:
    client = s.SpdyConnection(s.Role.CLIENT)
    server = s.SpdyConnection(s.Role.SERVER, initial_window=1000)
    client.open_stream(())
    client.receive_data(server.data_to_send())  # the server's SETTINGS
    server.receive_data(client.data_to_send())
    server.receive_data(f.FrameEncoder().encode(f.WindowUpdate(0, 10)))  # it speaks windows
    ev = server.receive_data(f.FrameEncoder().encode(f.Data(1, b"z" * 1001)))
    assert ev == [s.StreamReset(1, f.RstStatus.FLOW_CONTROL_ERROR)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.binary(min_size=1, max_size=5000)), max_size=30),
    st.booleans(),
    st.data(),
)
def test_transfer_under_any_split_and_flow_control(
    writes: list[tuple[int, bytes]], flow_control: bool, data: st.DataObject
) -> None:
    """Whatever the writes, windows and byte-stream splits, each stream's bytes arrive in
    order, and the receiver never holds more than it granted."""
    client = s.SpdyConnection(
        s.Role.CLIENT, initial_window=8192, session_window=65536, flow_control=flow_control
    )
    server = s.SpdyConnection(s.Role.SERVER)
    ids = [client.open_stream(()) for _ in range(3)]
    server.receive_data(client.data_to_send())
    for sid in ids:
        server.reply(sid)
    pending = {sid: b"" for sid in ids}
    for idx, payload in writes:
        pending[ids[idx]] += payload
    want = dict(pending)
    got = {sid: b"" for sid in ids}
    for _ in range(10_000):
        for sid in ids:
            if pending[sid]:
                n = server.send_data(sid, pending[sid])
                pending[sid] = pending[sid][n:]
        wire = server.data_to_send()
        if not wire and not any(pending.values()):
            break
        cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=3)))
        prev = 0
        for cut in [*cuts, len(wire)]:
            for ev in client.receive_data(wire[prev:cut]):
                if isinstance(ev, s.DataReceived):
                    got[ev.stream_id] += ev.data
                    client.consumed(ev.stream_id, len(ev.data))
                assert not isinstance(ev, s.ConnectionTerminated | s.StreamReset)
            prev = cut
        server.receive_data(client.data_to_send())
    assert got == want
