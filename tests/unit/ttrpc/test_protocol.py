"""ttrpc connection state machines, without sockets: ids, envelopes, refusals, any order."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from cri_async.api.ttrpc import ttrpc_pb2
from cri_async.ttrpc.errors import Code
from cri_async.ttrpc.framing import Frame, FrameDecoder, MessageType, encode_frame
from cri_async.ttrpc.protocol import (
    ClientConnection,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
)


def _frames(data: bytes) -> list[Frame]:
    out = FrameDecoder().feed(data)
    assert all(isinstance(f, Frame) for f in out)
    return out  # type: ignore[return-value]


def _response_frame(sid: int, code: int = 0, message: str = "", payload: bytes = b"") -> bytes:
    resp = ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=code, message=message), payload=payload)
    return encode_frame(sid, MessageType.RESPONSE, resp.SerializeToString())


def _request_frame(sid: int, service: str = "s", method: str = "m", payload: bytes = b"") -> bytes:
    req = ttrpc_pb2.Request(service=service, method=method, payload=payload)
    return encode_frame(sid, MessageType.REQUEST, req.SerializeToString())


def test_client_requests_use_growing_odd_ids_and_carry_the_envelope() -> None:
    c = ClientConnection()
    ids = [
        c.send_request("containerd.task.v2.Task", "State", b"\x0a\x01x"),
        c.send_request(
            "svc", "M", b"", timeout_ns=5_000_000_000, metadata=[("k", "1"), ("k", "2")]
        ),
        c.send_request("svc", "M", b"", timeout_ns=-3),
    ]
    assert ids == [1, 3, 5]
    assert c.pending == {1, 3, 5}
    frames = _frames(c.data_to_send())
    assert [(f.stream_id, f.type, f.flags) for f in frames] == [(i, 1, 0) for i in ids]
    reqs = [ttrpc_pb2.Request.FromString(f.payload) for f in frames]
    assert (reqs[0].service, reqs[0].method, reqs[0].payload) == (
        "containerd.task.v2.Task",
        "State",
        b"\x0a\x01x",
    )
    assert reqs[1].timeout_nano == 5_000_000_000
    assert [(kv.key, kv.value) for kv in reqs[1].metadata] == [("k", "1"), ("k", "2")]
    assert reqs[2].timeout_nano == 0
    assert c.data_to_send() == b""


def test_client_matches_answers_by_stream_and_drops_the_rest() -> None:
    c = ClientConnection()
    a, b, gone = (c.send_request("s", "m", b"") for _ in range(3))
    c.cancel(gone)
    wire = (
        _response_frame(b, payload=b"B")
        + _response_frame(99, payload=b"unknown stream")
        + _response_frame(gone, payload=b"too late")
        + encode_frame(a, MessageType.DATA, b"not a response")
        + encode_frame(
            a, MessageType.RESPONSE, ttrpc_pb2.Response(payload=b"A").SerializeToString()
        )
        + _response_frame(a, payload=b"duplicate")
    )
    assert c.receive_data(wire) == [
        ResponseReceived(b, 0, "", b"B"),
        ResponseReceived(a, 0, "", b"A"),  # no status at all means OK
    ]
    assert c.pending == frozenset()


def test_client_reports_error_status_oversize_and_garbage_per_stream() -> None:
    c = ClientConnection(max_message=32)
    err, big, bad = (c.send_request("s", "m", b"") for _ in range(3))
    wire = (
        _response_frame(err, Code.NOT_FOUND, "container not created")
        + struct.pack(">IIBB", 100, big, MessageType.RESPONSE, 0)
        + b"\0" * 100
        + encode_frame(bad, MessageType.RESPONSE, b"\xff\xff\xff")
    )
    got = {e.stream_id: e for e in c.receive_data(wire)}
    assert got[err] == ResponseReceived(err, Code.NOT_FOUND, "container not created", b"")
    assert got[big].code == Code.RESOURCE_EXHAUSTED and "100 bytes" in got[big].message
    assert got[bad].code == Code.INTERNAL and "undecodable" in got[bad].message


def test_server_turns_requests_into_events_and_answers() -> None:
    s = ServerConnection()
    req = ttrpc_pb2.Request(
        service="containerd.services.events.ttrpc.v1.Events",
        method="Forward",
        payload=b"p",
        timeout_nano=7,
        metadata=[ttrpc_pb2.KeyValue(key="containerd-namespace-ttrpc", value="k8s.io")],
    )
    events = s.receive_data(encode_frame(1, MessageType.REQUEST, req.SerializeToString()))
    assert events == [
        RequestReceived(
            1,
            "containerd.services.events.ttrpc.v1.Events",
            "Forward",
            b"p",
            7,
            (("containerd-namespace-ttrpc", "k8s.io"),),
        )
    ]
    assert s.data_to_send() == b""
    s.send_response(1, payload=b"ok")
    (frame,) = _frames(s.data_to_send())
    assert (frame.stream_id, frame.type, frame.flags) == (1, MessageType.RESPONSE, 0)
    resp = ttrpc_pb2.Response.FromString(frame.payload)
    assert (resp.status.code, resp.payload) == (0, b"ok")


def _refusals(s: ServerConnection) -> dict[int, tuple[int, str]]:
    out = {}
    for f in _frames(s.data_to_send()):
        resp = ttrpc_pb2.Response.FromString(f.payload)
        out[f.stream_id] = (resp.status.code, resp.status.message)
    return out


def test_server_refuses_what_ttrpc_refuses_and_keeps_serving() -> None:
    s = ServerConnection(max_message=256)
    wire = (
        _request_frame(2)  # even id
        + _request_frame(5)
        + _request_frame(3)  # smaller than the last id
        + _request_frame(5)  # reused
        + encode_frame(7, MessageType.DATA, b"stream data")  # no streaming calls here
        + encode_frame(9, MessageType.REQUEST, b"\xff\xff")  # not a Request
        + encode_frame(11, 0x7F, b"future type")  # ignored
        + struct.pack(">IIBB", 1000, 13, MessageType.REQUEST, 0)
        + b"\0" * 1000  # oversized
        + _request_frame(15, method="after")
    )
    events = s.receive_data(wire)
    assert [(e.stream_id, e.method) for e in events] == [(5, "m"), (15, "after")]
    refused = _refusals(s)
    assert {sid: code for sid, (code, _) in refused.items()} == {
        2: Code.INVALID_ARGUMENT,
        3: Code.INVALID_ARGUMENT,
        5: Code.INVALID_ARGUMENT,
        7: Code.INVALID_ARGUMENT,
        9: Code.INVALID_ARGUMENT,
        13: Code.RESOURCE_EXHAUSTED,
    }
    assert "odd" in refused[2][1]
    assert "re-used" in refused[3][1]
    assert "1000" in refused[13][1]


def test_server_answer_too_large_becomes_resource_exhausted() -> None:
    s = ServerConnection(max_message=64)
    s.send_response(1, payload=b"x" * 100)
    code, message = _refusals(s)[1]
    assert code == Code.RESOURCE_EXHAUSTED and "exceeds" in message


@given(
    st.lists(st.binary(max_size=40), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
    st.lists(st.integers(1, 50), max_size=10),
)
def test_client_and_server_agree_whatever_the_order_and_chunking(
    payloads: list[bytes], rnd: object, chunks: list[int]
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    client, server = ClientConnection(), ServerConnection()
    sent = {client.send_request("svc", "Echo", p): p for p in payloads}
    requests = server.receive_data(client.data_to_send())
    assert {r.stream_id: r.payload for r in requests} == sent
    rnd.shuffle(requests)
    for r in requests:
        server.send_response(r.stream_id, payload=r.payload[::-1])
    wire = server.data_to_send()
    got: list[ResponseReceived] = []
    pos = 0
    for size in [*chunks, len(wire)]:
        got += client.receive_data(wire[pos : pos + size])
        pos += size
    assert {e.stream_id: e.payload for e in got} == {sid: p[::-1] for sid, p in sent.items()}
    assert [e.stream_id for e in got] == [r.stream_id for r in requests]
    assert client.pending == frozenset()
