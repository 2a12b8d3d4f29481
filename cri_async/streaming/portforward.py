"""Port-forward rules shared by both transports (pure): header parsing, request ids for
old clients, and kubelet's wording of a failed forward."""

from __future__ import annotations

import os

from cri_async.streaming.remotecommand import StreamType


def parse_port(raw: str | None) -> int | None:
    try:
        port = int(raw or "")
    except ValueError:
        return None
    return port if 1 <= port <= 65535 else None


def request_id(header: str | None, kind: StreamType, stream_id: int) -> str:
    """The pair a stream belongs to. Clients older than the ``requestid`` header open the
    error stream and then the data stream with consecutive odd ids."""
    if header:
        return header
    return str(stream_id if kind is StreamType.ERROR else stream_id - 2)


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def forward_error(port: int, sandbox_id: str, exc: BaseException) -> str:
    """kubelet's message; the CRI streaming server knows no pod uid, so it is empty."""
    return f"error forwarding port {port} to pod {sandbox_id}, uid : {describe(exc)}"
