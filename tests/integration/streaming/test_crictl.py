"""Interoperability with a real Go client: crictl (client-go's remotecommand over SPDY and
WebSocket v5, and its port-forwarder) against our streaming server, through a minimal CRI
RuntimeService that answers Exec/Attach/PortForward with our URLs.

crictl is not packaged by Debian; the tests run where a cri-tools release is installed
(``CRICTL``, /opt/critools/*/bin/crictl or PATH) and skip elsewhere, also in CI."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.server import Server

from cri_async.streaming.server import StreamingServer
from tests.support.crictl import find_crictls
from tests.support.cristreams import Records, StreamingRuntimeService, container, sandbox
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket


CRICTLS = find_crictls()
if not CRICTLS:
    pytest.skip("crictl (cri-tools) is not installed", allow_module_level=True)


def has_websocket(crictl: str) -> bool:
    """Whether this crictl has ``exec --transport`` (cri-tools >= 1.30 or so)."""
    import subprocess

    out = subprocess.run([crictl, "exec", "--help"], capture_output=True, text=True, timeout=30)
    return "--transport" in out.stdout


@pytest.fixture(params=CRICTLS, ids=lambda c: c.split("/")[-3] if "/opt/" in c else c)
def crictl(request: pytest.FixtureRequest) -> str:
    path: str = request.param
    return path


@dataclass
class Cri:
    crictl: str
    socket: str
    service: StreamingRuntimeService
    backend: HostStreamBackend

    def argv(self, *args: str) -> list[str]:
        return [self.crictl, "--runtime-endpoint", f"unix://{self.socket}", *args]

    def transport(self, name: str) -> list[str]:
        """The transport flag, or a skip when this crictl predates WebSocket."""
        if name == "spdy":
            return []
        if not has_websocket(self.crictl):
            pytest.skip(f"{self.crictl} has no WebSocket transport")
        return ["-r", name]

    async def run(self, *args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        p = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(p.communicate(stdin), 60)
        assert p.returncode is not None
        return p.returncode, out, err


@pytest_asyncio.fixture
async def cri(tmp_path: Path, backend: HostStreamBackend, crictl: str) -> AsyncIterator[Cri]:
    records = Records()
    records.containers["ctr"] = container("ctr")
    records.sandboxes["pod"] = sandbox("pod")
    sock = str(tmp_path / "cri.sock")
    if len(sock) > 100:
        sock = f"/tmp/cri-streaming-{os.getpid()}.sock"
    async with StreamingServer(backend) as srv:
        service = StreamingRuntimeService(records.service(srv), records)
        grpc = Server([service])
        await grpc.start(path=sock)
        try:
            yield Cri(crictl, sock, service, backend)
        finally:
            grpc.close()
            await grpc.wait_closed()
            Path(sock).unlink(missing_ok=True)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_exec(cri: Cri, transport: str) -> None:
    rc, out, err = await cri.run(
        "exec", *cri.transport(transport), "ctr", "sh", "-c", "printf hello; printf oops >&2"
    )
    assert rc == 0, err
    assert out == b"hello"
    assert err.endswith(b"oops")


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_exec_exit_code(cri: Cri, transport: str) -> None:
    rc, _, err = await cri.run("exec", *cri.transport(transport), "ctr", "sh", "-c", "exit 3")
    assert rc == 1  # crictl's own exit status; the message carries the code
    assert b"command terminated with exit code 3" in err


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_exec_stdin_until_eof(cri: Cri, transport: str) -> None:
    rc, out, _ = await cri.run(
        "exec", "-i", *cri.transport(transport), "ctr", "sh", "-c", "cat; echo done", stdin=b"abc"
    )
    assert (rc, out) == (0, b"abcdone\n")


async def test_attach_stdin_once(cri: Cri) -> None:
    sh = await cri.backend.add_container("sh", ["sh"])
    cri.service.records.containers["sh"] = container("sh", stdin_once=True)
    rc, out, _ = await cri.run("attach", "-i", "sh", stdin=b"printf hello\n")
    assert (rc, out) == (0, b"hello")
    assert await asyncio.wait_for(sh.wait(), 30) == 0  # stdin EOF reached sh


async def test_exec_tty_gets_the_client_terminal_size(cri: Cri) -> None:
    # crictl -t wants a terminal: give it a pty of 33 rows by 77 columns.
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
    script = 'until [ "$(stty size)" = "33 77" ]; do sleep 0.02; done; echo "<$(stty size)>"'
    try:
        p = await asyncio.create_subprocess_exec(
            *cri.argv("exec", "-i", "-t", "ctr", "sh", "-c", script),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        assert await asyncio.wait_for(p.wait(), 60) == 0
        out = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert b"<33 77>" in out


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


async def test_port_forward(cri: Cri) -> None:
    http = await asyncio.start_server(_http, "127.0.0.1", 0)
    port = http.sockets[0].getsockname()[1]
    p = await asyncio.create_subprocess_exec(
        *cri.argv("port-forward", "pod", f"0:{port}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 30)
        assert line.startswith(b"Forwarding from 127.0.0.1:"), line
        local = int(line.split(b" -> ")[0].rsplit(b":", 1)[1])
        for _ in range(3):  # several connections over one SPDY session
            r, w = await asyncio.open_connection("127.0.0.1", local)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(r.read(), 30)
            w.close()
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"ok")
    finally:
        p.terminate()
        await p.wait()
        http.close()
        await http.wait_closed()
