"""remotecommand rules: negotiation (client order; 400/403), expected streams, the status
JSON byte for byte as Go writes it, its parsing, and resize messages split anywhere."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.streaming import remotecommand as rc
from cri_async.streaming.backend import Stdio, TerminalSize

SUPPORTED = [p.value for p in rc.SPDY_EXEC_PROTOCOLS]


def test_negotiate_in_client_order_across_header_lines() -> None:
    lines = ["v5.channel.k8s.io", "v3.channel.k8s.io, v4.channel.k8s.io"]
    assert rc.negotiate(lines, SUPPORTED) == "v3.channel.k8s.io"
    assert rc.negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"], SUPPORTED) == (
        "v4.channel.k8s.io"
    )


def test_negotiate_failures() -> None:
    with pytest.raises(rc.NegotiationError) as e:
        rc.negotiate([], SUPPORTED)
    assert e.value.status == 400
    with pytest.raises(rc.NegotiationError) as e:
        rc.negotiate(["v9"], SUPPORTED)
    assert e.value.status == 403


def test_expected_streams() -> None:
    T = rc.StreamType
    all3 = Stdio(stdin=True, stdout=True, stderr=True)
    assert rc.expected_streams(all3, rc.StreamProtocol.V4) == {
        T.ERROR,
        T.STDIN,
        T.STDOUT,
        T.STDERR,
    }
    tty = Stdio(stdin=True, stdout=True, tty=True)
    assert rc.expected_streams(tty, rc.StreamProtocol.V4) == {
        T.ERROR,
        T.STDIN,
        T.STDOUT,
        T.RESIZE,
    }
    assert T.RESIZE not in rc.expected_streams(tty, rc.StreamProtocol.V2)
    assert rc.expected_streams(Stdio(stdout=True), rc.StreamProtocol.V1) == {T.ERROR, T.STDOUT}


def test_status_bytes_are_gos() -> None:
    ok = rc.encode_status(rc.Outcome(rc.OutcomeKind.SUCCESS), json_status=True)
    assert ok == b'{"metadata":{},"status":"Success"}'
    exit3 = rc.encode_status(rc.Outcome.from_exit_code(3), json_status=True)
    assert exit3 == (
        b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit '
        b'code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":'
        b'"ExitCode","message":"3"}]}}'
    )
    internal = rc.encode_status(
        rc.Outcome(rc.OutcomeKind.INTERNAL, message='no such file "<x>" & more'), True
    )
    assert internal == (
        b'{"metadata":{},"status":"Failure","message":"Internal error occurred: no such file '
        b'\\"\\u003cx\\u003e\\" \\u0026 more","reason":"InternalError","details":{"causes":'
        b'[{"message":"no such file \\"\\u003cx\\u003e\\" \\u0026 more"}]},"code":500}'
    )


def test_old_protocols_write_text_on_failure_only() -> None:
    assert rc.encode_status(rc.Outcome(rc.OutcomeKind.SUCCESS), json_status=False) == b""
    text = rc.encode_status(rc.Outcome.from_exit_code(2), json_status=False)
    assert text == b"command terminated with non-zero exit code: exit status 2"


@pytest.mark.parametrize(
    "outcome",
    [
        rc.Outcome(rc.OutcomeKind.SUCCESS),
        rc.Outcome.from_exit_code(3),
        rc.Outcome.from_exit_code(255),
        rc.Outcome(rc.OutcomeKind.INTERNAL, message="boom"),
    ],
)
def test_status_round_trip(outcome: rc.Outcome) -> None:
    got = rc.parse_status(rc.encode_status(outcome, True), True)
    assert (got.kind, got.exit_code) == (outcome.kind, outcome.exit_code)


def test_parse_status_refuses_what_client_go_refuses() -> None:
    for raw in (
        b"",
        b"not json",
        b'{"status":"Weird"}',
        b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[]}}',
        b'{"status":"Failure","reason":"NonZeroExitCode",'
        b'"details":{"causes":[{"reason":"ExitCode","message":"300"}]}}',
    ):
        with pytest.raises(rc.StatusError):
            rc.parse_status(raw, True)
    assert rc.parse_status(b"", False).kind is rc.OutcomeKind.SUCCESS
    assert rc.parse_status(b"broken", False).message == "broken"


def test_go_json_escapes() -> None:
    assert rc.go_json({"a": "<&>\u2028é"}) == '{"a":"\\u003c\\u0026\\u003e\\u2028é"}'.encode()


sizes = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=8)


@given(sizes, st.data())
def test_resize_stream_split_anywhere(pairs: list[tuple[int, int]], data: st.DataObject) -> None:
    stream = b"".join(rc.encode_resize(TerminalSize(w, h)) for w, h in pairs)
    # Go's encoder writes one value per line; others may not: mix in bare values too
    stream += b' {"width": 7, "HEIGHT": 9}'
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = rc.ResizeDecoder()
    got: list[TerminalSize] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += dec.feed(stream[prev:cut])
        prev = cut
    assert got == [TerminalSize(w, h) for w, h in pairs] + [TerminalSize(7, 9)]


def test_resize_wire_form_and_bad_values() -> None:
    assert rc.encode_resize(TerminalSize(100, 40)) == b'{"Width":100,"Height":40}\n'
    assert json.loads(rc.encode_resize(TerminalSize(1, 2))) == {"Width": 1, "Height": 2}
    for bad in (b"[1,2]", b'{"Width":-1,"Height":2}', b'{"Width":true,"Height":2}'):
        with pytest.raises(rc.ResizeError):
            rc.ResizeDecoder().feed(bad)
    with pytest.raises(rc.ResizeError):
        rc.ResizeDecoder().feed(b"{" + b" " * 5000)
