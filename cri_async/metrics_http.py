"""The ``GET /metrics`` endpoint: a minimal HTTP/1.1 server on the event loop.

Serving on the loop (not prometheus_client's thread) means collectors read the core's
tables from the thread that changes them. One request per connection; the request head is
parsed by the pure ``parse_request_head`` (bounded, never more than ``MAX_HEAD`` bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("cri_async.metrics")

MAX_HEAD = 8192
READ_TIMEOUT = 10.0


class BadRequest(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-cased names; a repeated header keeps its last value


def parse_request_head(head: bytes) -> Request:
    """The request line and headers of ``head`` (up to and excluding the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes every byte)
        raise BadRequest("undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    method, target, _ = parts
    if not target.startswith("/"):
        raise BadRequest(f"bad request target {target[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return Request(method, target, headers)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def response(status: int, body: bytes, content_type: str, *, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


def route(req: Request, render: Callable[[str], tuple[bytes, str]]) -> bytes:
    """The response to one request: metrics on ``/metrics``, else a short error."""
    path = req.target.split("?", 1)[0]
    if path != "/metrics":
        return response(404, b"cri-async: metrics are at /metrics\n", "text/plain")
    if req.method not in ("GET", "HEAD"):
        return response(405, b"GET only\n", "text/plain")
    body, content_type = render(req.headers.get("accept", ""))
    return response(200, body, content_type, head_only=req.method == "HEAD")


class MetricsEndpoint:
    def __init__(self, render: Callable[[str], tuple[bytes, str]], host: str, port: int) -> None:
        self._render = render
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_HEAD
        )
        log.info("metrics on http://%s:%d/metrics", *(self.address or ("?", 0)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
                out = route(parse_request_head(head[:-4]), self._render)
            except (asyncio.LimitOverrunError, BadRequest):
                out = response(400, b"bad request\n", "text/plain")
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            writer.write(out)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for t in list(self._conns):
            t.cancel()
        await server.wait_closed()
