"""The asyncio ttrpc client and server over real unix sockets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from cri_async.api.ttrpc.ttrpc_pb2 import KeyValue
from cri_async.ttrpc import CallContext, Client, Server, socket_path
from cri_async.ttrpc.errors import (
    Code,
    ConnectionClosed,
    DeadlineExceededError,
    InternalError,
    NotFoundError,
    ResourceExhaustedError,
    UnimplementedError,
    UnknownError,
    error_for,
)
from cri_async.ttrpc.framing import FrameDecoder, MessageType, encode_frame

SVC = "test.v1.Echo"


@pytest.fixture
def sock() -> Iterator[str]:
    # tmp_path can be too long for sun_path (108 bytes).
    d = tempfile.mkdtemp(prefix="ttrpc", dir="/tmp")
    yield f"{d}/s.sock"
    shutil.rmtree(d)


class Echo:
    """Handlers: Echo answers at once; Hold answers when released; Fail raises."""

    def __init__(self) -> None:
        self.gates: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )
        self.held: asyncio.Queue[str] = asyncio.Queue()
        self.seen: list[CallContext] = []

    async def echo(self, req: KeyValue, ctx: CallContext) -> KeyValue:
        self.seen.append(ctx)
        return KeyValue(key=req.key, value=req.value[::-1])

    async def hold(self, req: KeyValue, ctx: CallContext) -> KeyValue:
        self.held.put_nowait(req.key)
        await self.gates[req.key].wait()
        return KeyValue(key=req.key, value="released")

    async def fail(self, req: KeyValue, ctx: CallContext) -> KeyValue:
        if req.key == "notfound":
            raise NotFoundError(f"no task {req.value}")
        raise RuntimeError("boom: internals must not leak")


@pytest_asyncio.fixture
async def served(sock: str) -> AsyncIterator[tuple[Server, Echo]]:
    echo = Echo()
    server = Server(handler_timeout=30)
    server.register(SVC, "Echo", KeyValue, echo.echo)
    server.register(SVC, "Hold", KeyValue, echo.hold)
    server.register(SVC, "Fail", KeyValue, echo.fail)
    await server.start(sock)
    try:
        yield server, echo
    finally:
        await server.close()


async def test_many_concurrent_calls_on_one_connection_answered_out_of_order(
    served: tuple[Server, Echo], sock: str
) -> None:
    _, echo = served
    async with await Client.connect(sock) as client:
        n = 50
        calls = [
            asyncio.create_task(client.call(SVC, "Hold", KeyValue(key=str(i)), KeyValue))
            for i in range(n)
        ]
        quick = await client.call(SVC, "Echo", KeyValue(key="q", value="abc"), KeyValue)
        assert quick.value == "cba"  # not stuck behind the held calls
        assert sorted([await echo.held.get() for _ in range(n)]) == sorted(map(str, range(n)))
        for i in reversed(range(n)):
            echo.gates[str(i)].set()
        got = await asyncio.gather(*calls)
        assert [r.key for r in got] == [str(i) for i in range(n)]
        assert {r.value for r in got} == {"released"}


async def test_status_codes_become_exceptions(served: tuple[Server, Echo], sock: str) -> None:
    async with await Client.connect(sock) as client:
        with pytest.raises(NotFoundError, match="no task abc") as e:
            await client.call(SVC, "Fail", KeyValue(key="notfound", value="abc"), KeyValue)
        assert e.value.code is Code.NOT_FOUND and e.value.message == "no task abc"
        with pytest.raises(InternalError) as internal:
            await client.call(SVC, "Fail", KeyValue(key="other"), KeyValue)
        assert "boom" not in str(internal.value)
        with pytest.raises(UnimplementedError, match=r"test\.v1\.Echo/Nope"):
            await client.call(SVC, "Nope", KeyValue(), KeyValue)
        # The connection survives errors.
        assert (await client.call(SVC, "Echo", KeyValue(value="ok"), KeyValue)).value == "ko"


def test_error_for_maps_every_code_and_unknown_numbers() -> None:
    for code in Code:
        if code is Code.OK:
            with pytest.raises(ValueError, match="OK"):
                error_for(code, "")
            continue
        err = error_for(code, "m")
        assert err.code is code and err.message == "m"
    odd = error_for(99, "strange")
    assert isinstance(odd, UnknownError) and "99" in odd.message


async def test_metadata_reaches_the_handler(served: tuple[Server, Echo], sock: str) -> None:
    _, echo = served
    async with await Client.connect(sock) as client:
        md = [("containerd-namespace-ttrpc", "k8s.io"), ("X-Other", "1")]
        await client.call(SVC, "Echo", KeyValue(), KeyValue, metadata=md)
    (ctx,) = echo.seen
    assert (ctx.service, ctx.method) == (SVC, "Echo")
    assert ctx.get("containerd-namespace-ttrpc") == "k8s.io"
    assert ctx.get("x-other") == "1"
    assert ctx.get("missing") is None


async def test_deadline_fails_only_that_call_and_late_answers_are_dropped(
    served: tuple[Server, Echo], sock: str
) -> None:
    _, echo = served
    async with await Client.connect(sock) as client:
        with pytest.raises(DeadlineExceededError, match="Hold"):
            await client.call(SVC, "Hold", KeyValue(key="late"), KeyValue, timeout=0.05)
        echo.gates["late"].set()  # its answer now arrives for a stream nobody waits on
        got = await client.call(SVC, "Echo", KeyValue(value="next"), KeyValue)
        assert got.value == "txen"


async def test_server_enforces_its_own_deadline(sock: str) -> None:
    echo = Echo()
    server = Server(handler_timeout=0.05)
    server.register(SVC, "Hold", KeyValue, echo.hold)
    await server.start(sock)
    try:
        async with await Client.connect(sock) as client:
            with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
                await client.call(SVC, "Hold", KeyValue(key="never"), KeyValue, timeout=30)
    finally:
        await server.close()


async def test_oversized_request_is_refused_locally(served: tuple[Server, Echo], sock: str) -> None:
    async with await Client.connect(sock) as client:
        with pytest.raises(ResourceExhaustedError, match="exceeds"):
            await client.call(SVC, "Echo", KeyValue(value="x" * (4 << 20)), KeyValue)
        assert (await client.call(SVC, "Echo", KeyValue(value="ab"), KeyValue)).value == "ba"


async def test_dropped_connection_fails_every_pending_and_later_call(sock: str) -> None:
    """A peer that reads three requests and hangs up without answering."""
    got_requests = asyncio.Event()

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = FrameDecoder()
        frames: list[object] = []
        while len(frames) < 3:
            frames += dec.feed(await reader.read(4096))
        got_requests.set()
        writer.close()

    server = await asyncio.start_unix_server(rude, sock)
    try:
        client = await Client.connect(sock)
        calls = [
            asyncio.create_task(client.call(SVC, "Echo", KeyValue(key=str(i)), KeyValue))
            for i in range(3)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert got_requests.is_set()
        assert all(isinstance(r, ConnectionClosed) for r in results), results
        assert client.closed
        with pytest.raises(ConnectionClosed, match="closed by the peer"):
            await client.call(SVC, "Echo", KeyValue(), KeyValue)
        await client.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_close_by_client_fails_pending_calls(served: tuple[Server, Echo], sock: str) -> None:
    client = await Client.connect(sock)
    pending = asyncio.create_task(client.call(SVC, "Hold", KeyValue(key="x"), KeyValue))
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(ConnectionClosed, match="closed by the client"):
        await pending
    await client.wait_closed()


async def test_server_close_drops_connections_and_removes_socket(sock: str) -> None:
    echo = Echo()
    server = Server()
    server.register(SVC, "Hold", KeyValue, echo.hold)
    await server.start(sock)
    client = await Client.connect(sock)
    pending = asyncio.create_task(client.call(SVC, "Hold", KeyValue(key="x"), KeyValue))
    assert await echo.held.get() == "x"
    await server.close()
    with pytest.raises(ConnectionClosed):
        await pending
    assert not Path(sock).exists()
    await client.close()


async def test_start_replaces_a_stale_socket_but_not_a_live_one(sock: str) -> None:
    import socket as pysocket

    stale = pysocket.socket(pysocket.AF_UNIX)
    stale.bind(sock)
    stale.close()  # the file stays, nobody listens
    first = Server()
    await first.start(sock)
    try:
        second = Server()
        with pytest.raises(FileExistsError, match="already listening"):
            await second.start(sock)
        async with await Client.connect(sock) as client:
            with pytest.raises(UnimplementedError):
                await client.call(SVC, "Echo", KeyValue(), KeyValue)
    finally:
        await first.close()


async def test_raw_peer_sees_odd_ids_and_answers_by_id(sock: str) -> None:
    """A hand-written server answering in reverse order proves the id matching on the wire."""

    async def reverse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from cri_async.api.ttrpc import ttrpc_pb2

        dec = FrameDecoder()
        frames: list = []  # type: ignore[type-arg]
        while len(frames) < 2:
            frames += dec.feed(await reader.read(4096))
        assert [f.stream_id for f in frames] == [1, 3]
        for f in reversed(frames):
            req = ttrpc_pb2.Request.FromString(f.payload)
            body = ttrpc_pb2.Response(payload=req.payload).SerializeToString()
            writer.write(encode_frame(f.stream_id, MessageType.RESPONSE, body))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(reverse, sock)
    try:
        async with await Client.connect(sock) as client:
            a = asyncio.create_task(client.call(SVC, "E", KeyValue(key="a"), KeyValue))
            await asyncio.sleep(0)
            b = asyncio.create_task(client.call(SVC, "E", KeyValue(key="b"), KeyValue))
            assert [(await a).key, (await b).key] == ["a", "b"]
    finally:
        server.close()
        await server.wait_closed()


async def test_connect_to_nothing_raises() -> None:
    with pytest.raises(FileNotFoundError):
        await Client.connect("unix:///nonexistent/shim.sock")


def test_socket_path_spellings() -> None:
    assert socket_path("unix:///run/containerd/s/abc") == "/run/containerd/s/abc"
    assert socket_path("/run/x.sock\n") == "/run/x.sock"
    assert socket_path("unix://@containerd-shim/x") == "\0containerd-shim/x"
    with pytest.raises(ValueError, match="only unix"):
        socket_path("vsock://3:1024")
    with pytest.raises(ValueError, match="absolute"):
        socket_path("relative.sock")
