"""HTTPS streaming: a self-signed certificate made at start (as containerd does), or the
configured files; HTTP/1.1 only in ALPN."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from cri_async.config import StreamingConfig
from cri_async.streaming import client
from cri_async.streaming.backend import Stdio
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import ExecTarget
from cri_async.streaming.tls import self_signed
from tests.integration.streaming.conftest import Variant
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket

HELLO = ExecTarget("ctr", ("printf", "hello"), Stdio(stdout=True, stderr=True))


def trusting(pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pem.decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # the server must pick http/1.1
    return ctx


async def test_self_signed(backend: HostStreamBackend, variant: Variant) -> None:
    async with StreamingServer(backend, StreamingConfig(tls=True)) as srv:
        assert srv.base_url.startswith("https://127.0.0.1:")
        assert srv.certificate is not None
        ctx = trusting(srv.certificate)
        res = await asyncio.wait_for(
            client.run(srv.issue(HELLO), ssl_context=ctx, **variant.kw()), 30
        )
        assert res.stdout == b"hello"
        # an unverified peer is refused by a verifying client
        with pytest.raises(ssl.SSLError):
            await client.run(srv.issue(HELLO), **variant.kw())


async def test_configured_files(tmp_path: Path, backend: HostStreamBackend) -> None:
    cert, key = self_signed("127.0.0.1")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    cfg = StreamingConfig(
        tls=True, tls_cert_file=str(tmp_path / "c.pem"), tls_key_file=str(tmp_path / "k.pem")
    )
    async with StreamingServer(backend, cfg) as srv:
        assert srv.certificate is None
        res = await asyncio.wait_for(client.run(srv.issue(HELLO), ssl_context=trusting(cert)), 30)
        assert res.stdout == b"hello"
