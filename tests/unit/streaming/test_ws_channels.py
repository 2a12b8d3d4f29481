"""The WebSocket channel protocols: framing per protocol, v5 CLOSE, what is dropped,
negotiation in the client's order, and the port-forward port prefix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.streaming import ws_channels as ch

P = ch.ChannelProtocol


@given(st.sampled_from(list(P)), st.integers(0, 254), st.binary(max_size=200))
def test_round_trip(protocol: ch.ChannelProtocol, channel: int, data: bytes) -> None:
    if protocol.base64 and channel > 207:  # '0' + channel must stay one byte
        with pytest.raises(ValueError, match="one character"):
            ch.encode(protocol, channel, data)
        return
    msg = ch.encode(protocol, channel, data)
    assert isinstance(msg, str) == protocol.base64
    assert ch.decode(protocol, msg, 255) == ch.ChannelData(channel, data)


def test_wire_forms() -> None:
    assert ch.encode(P.V5, ch.STDOUT, b"hi") == b"\x01hi"
    assert ch.encode(P.V4_BASE64, ch.STDERR, b"hi") == "2aGk="
    assert ch.encode(P.V1_BASE64, ch.STDOUT, b"") == "1"  # the "connected" message
    assert ch.encode_close(ch.STDIN) == b"\xff\x00"


def test_v5_close_signal() -> None:
    assert ch.decode(P.V5, b"\xff\x00", 5) == ch.ChannelClose(0)
    for bad in (b"\xff", b"\xff\x00\x00", b"\xff\x09"):
        with pytest.raises(ch.ChannelProtocolError):
            ch.decode(P.V5, bad, 5)
    # before v5, 255 is just a channel out of range
    assert ch.decode(P.V4, b"\xff\x00", 5) is None


def test_dropped_messages() -> None:
    assert ch.decode(P.V4, b"", 5) is None
    assert ch.decode(P.V4, b"\x07abc", 5) is None
    assert ch.decode(P.V4_BASE64, "0!!notbase64", 5) is None
    assert ch.decode(P.V4_BASE64, "9aGk=", 5) is None


def test_negotiation_follows_the_client_order() -> None:
    offered = ["base64.channel.k8s.io", "v4.channel.k8s.io"]
    assert ch.negotiate(offered, ch.EXEC_PROTOCOLS) is P.V1_BASE64
    assert ch.negotiate(["v5.channel.k8s.io"], ch.EXEC_PROTOCOLS) is P.V5
    assert ch.negotiate([], ch.EXEC_PROTOCOLS) is P.NONE
    assert ch.negotiate(["v9.channel.k8s.io"], ch.EXEC_PROTOCOLS) is None
    assert ch.negotiate(["v5.channel.k8s.io"], ch.PORT_FORWARD_PROTOCOLS) is None
    assert ch.negotiate([" v4.channel.k8s.io "], ch.PORT_FORWARD_PROTOCOLS) is P.V4


def test_protocol_properties() -> None:
    assert [p for p in P if p.json_status] == [P.V5, P.V4, P.V4_BASE64]
    assert [p for p in P if p.close_signal] == [P.V5]


@given(st.integers(1, 65535), st.binary(max_size=50), st.data())
def test_port_prefix_is_stripped_across_any_split(
    port: int, payload: bytes, data: st.DataObject
) -> None:
    stream = ch.port_prefix(port) + payload
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    reader = ch.PortPrefixReader(port)
    out = b""
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += reader.feed(stream[prev:cut])
        prev = cut
    assert out == payload
    assert reader.seen


def test_port_prefix_is_little_endian_and_checked() -> None:
    assert ch.port_prefix(8080) == b"\x90\x1f"
    with pytest.raises(ch.ChannelProtocolError):
        ch.PortPrefixReader(80).feed(ch.port_prefix(81))


def test_the_spdy_tunnel_is_chosen_in_the_clients_order() -> None:
    from cri_async.streaming.ws_tunnel import PORT_FORWARD_TUNNEL, wants_tunnel

    ours = [p.value for p in ch.PORT_FORWARD_PROTOCOLS]
    assert PORT_FORWARD_TUNNEL == "SPDY/3.1+portforward.k8s.io"
    assert wants_tunnel([PORT_FORWARD_TUNNEL], ours)
    assert wants_tunnel(["x", " SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"], ours)
    assert not wants_tunnel(["v4.channel.k8s.io", PORT_FORWARD_TUNNEL], ours)
    assert not wants_tunnel([], ours)
    assert not wants_tunnel(["SPDY/3.1+channel.k8s.io"], ours)
