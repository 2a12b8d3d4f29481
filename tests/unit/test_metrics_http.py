"""The /metrics endpoint's request parsing and routing (pure), and the endpoint on a socket."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.metrics_http import (
    MAX_HEAD,
    BadRequest,
    MetricsEndpoint,
    Request,
    parse_request_head,
    route,
)


def render(accept: str) -> tuple[bytes, str]:
    return f"up 1 {accept}\n".encode(), "text/plain; version=0.0.4"


def test_parse_request_head() -> None:
    req = parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept:  text/plain \r\n")
    assert req == Request("GET", "/metrics?x=1", {"host": "a", "accept": "text/plain"})


@pytest.mark.parametrize(
    "head",
    [b"", b"GET /metrics", b"GET metrics HTTP/1.1", b"GET / SPDY/3", b"GET / HTTP/1.1\r\nNoColon"],
)
def test_bad_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request_head(head)


@given(st.binary(max_size=512))
def test_any_bytes_parse_or_raise_bad_request(head: bytes) -> None:
    try:
        req = parse_request_head(head)
    except BadRequest:
        return
    assert req.target.startswith("/") and req.method.isalpha()


@given(
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.from_regex(r"/[a-z0-9/?=&]{0,40}", fullmatch=True),
    st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
        st.from_regex(r"[ -~]{0,40}", fullmatch=True).map(str.strip),
        max_size=5,
    ),
)
def test_well_formed_requests_round_trip(method: str, target: str, headers: dict[str, str]) -> None:
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = parse_request_head(head.encode())
    assert (req.method, req.target) == (method, target)
    assert req.headers == {k.lower(): v for k, v in headers.items()}


def test_routing() -> None:
    ok = route(Request("GET", "/metrics", {"accept": "a/b"}), render)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"up 1 a/b\n")
    head = route(Request("HEAD", "/metrics", {}), render)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert route(Request("GET", "/", {}), render).startswith(b"HTTP/1.1 404")
    assert route(Request("POST", "/metrics", {}), render).startswith(b"HTTP/1.1 405")


async def test_endpoint_serves_and_refuses_oversized_heads() -> None:
    ep = MetricsEndpoint(render, "127.0.0.1", 0)
    await ep.start()
    try:
        assert ep.address is not None
        host, port = ep.address
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://{host}:{port}/metrics", headers={"accept": "x/y"})
            assert r.status_code == 200 and r.text == "up 1 x/y\n"
            assert (await client.get(f"http://{host}:{port}/nope")).status_code == 404
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await ep.close()
    assert ep.address is None
