"""Exec, Attach and PortForward end to end on real containers: a cri-async server on runc,
crun and runsc (under conmon), its CRI RPCs handing out URLs, our client over SPDY and over
WebSocket v5 (what kubectl and ``crictl -r websocket`` speak).

Needs root, the runtime, conmon and the registry tools (``make test`` installs them);
without them the tests skip locally and fail under CI=true. runsc refuses tty containers,
so attaching to a tty is covered on runc and crun (on runsc: that the container is refused);
a tty *exec* works on all three.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest
import pytest_asyncio
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.streaming import client
from cri_async.streaming.client import CommandSession, OutputStream, TerminalSize
from cri_async.streaming.remotecommand import OutcomeKind
from tests.integration.conftest import wait_exit, wait_state
from tests.integration.streaming.conftest import SPDY, WS_V5, Variant
from tests.integration.streaming.realnode import RUNTIMES, TUNNEL, WEB, Node, image, real_node
from tests.support.poll import until

pytestmark = [
    pytest.mark.root,
    pytest.mark.registry,
    pytest.mark.asyncio(loop_scope="module"),
]

VARIANTS = [SPDY, WS_V5]
# Port-forward also tunnels SPDY in a WebSocket (critest -websocket-portforward does).
FORWARD_VARIANTS = [SPDY, WS_V5, TUNNEL]
Pod = tuple[str, pb.PodSandboxConfig]
T = TypeVar("T")
BIG = 256 * 1024 * 1024
UP = 64 * 1024 * 1024
LINE = b"0123456789abcdef\n"  # what `yes 0123456789abcdef` prints
WEB_PORT = 8080
SOURCE_PORT = 9000
SINK_PORT = 9001
HOST_SOURCE_PORT = 9100
# The pod's servers are scripts behind `nc -l -e` in a loop, so a connection's socket is
# never shared across a fork: under runsc (this gVisor, host network mode) a forking
# server such as busybox httpd or `nc -ll -e` loses connections now and then (resets,
# empty replies), with or without cri-async in the path. Between two connections a
# server is briefly not listening: clients retry a refused connection.
SOURCE = b"#!/bin/sh\nyes 0123456789abcdef | head -c %d\n" % BIG
# A connection to SOURCE_PORT gets BIG bytes of `yes`; what a connection to SINK_PORT sends
# is hashed into /tmp/up.sum once the client half-closes it (that nc's stdin is a fifo that
# never ends: on stdin EOF nc would half-close first, and a forwarder then gives the other
# direction only a second, as containerd's and socat do).
SERVERS = f"""
while :; do nc -l -p {SOURCE_PORT} -e /source; done &
mkfifo /tmp/never
exec 3<>/tmp/never
while :; do nc -l -p {SINK_PORT} <&3 | sha256sum > /tmp/up.tmp && mv /tmp/up.tmp /tmp/up.sum; done &
while :; do nc -l -p 80 -e /web; done &
while :; do nc -l -p {WEB_PORT} -e /web; done
"""


@pytest.fixture(scope="module")
def streams_image() -> Iterator[str]:
    with image({"/web": WEB, "/source": SOURCE}) as ref:
        yield ref


@pytest.fixture(params=VARIANTS, ids=[v.name for v in VARIANTS])
def v(request: pytest.FixtureRequest) -> Variant:
    variant: Variant = request.param
    return variant


@pytest.fixture(params=FORWARD_VARIANTS, ids=[v.name for v in FORWARD_VARIANTS])
def fv(request: pytest.FixtureRequest) -> Variant:
    variant: Variant = request.param
    return variant


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=RUNTIMES)
async def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, streams_image: str
) -> AsyncIterator[Node]:
    async with real_node(request.param, tmp_path_factory.mktemp("node"), streams_image) as n:
        yield n


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pod(node: Node) -> Pod:
    return await node.pod("streams")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sleeper(node: Node, pod: Pod) -> str:
    return await node.container(pod, "sleeper", ["sleep", "100000"])


@dataclass(frozen=True)
class Servers:
    pod: str
    container: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(node: Node, pod: Pod) -> Servers:
    """A container serving HTTP, a 256 MiB source and a hashing sink, once the web server
    answers through a port-forward."""
    cid = await node.container(pod, "servers", ["sh", "-c", SERVERS])
    return Servers(pod[0], cid)


async def forwarded(
    node: Node,
    pod: str,
    port: int,
    v: Variant,
    talk: Callable[[client.ForwardStream], Awaitable[T]],
    timeout: float = 60,
) -> T:
    """``talk`` over a forwarded connection to ``port``, once a connection is accepted: a
    refused one (the pod's server is between two connections) is tried again."""

    async def attempt() -> tuple[T] | None:
        url = await node.forward_url(pod, [port])
        async with await client.open_port_forward(url, transport=v.transport, ports=[port]) as pf:
            stream = await pf.connect(port)
            try:
                async with asyncio.timeout(timeout):
                    result = await talk(stream)
            except Exception:
                if "connection refused" in await stream.error():
                    return None
                raise
            error = await stream.error()
            if "connection refused" in error:
                return None
            assert not error, error
        return (result,)

    done = await until(attempt, timeout=timeout, interval=0.05, what=f"a connection to {port}")
    return done[0]


async def read_all(stream: client.ForwardStream) -> bytes:
    reply = b""
    while data := await stream.read():
        reply += data
    return reply


async def http_get(node: Node, pod: str, port: int, v: Variant) -> bytes:
    async def get(stream: client.ForwardStream) -> bytes:
        await stream.write(b"GET / HTTP/1.0\r\n\r\n")
        return await read_all(stream)

    return await forwarded(node, pod, port, v, get)


async def read_until(s: CommandSession, want: bytes, stream: OutputStream | None = None) -> bytes:
    """Output (of ``stream``, else all of it) until it contains ``want``."""
    got = b""
    async with asyncio.timeout(60):
        while want not in got:
            chunk = await s.read()
            assert chunk is not None, f"output ended before {want!r}: {got!r}"
            if stream is None or chunk.stream is stream:
                got += chunk.data
    return got


async def drain(s: CommandSession) -> bytes:
    got = b""
    async with asyncio.timeout(60):
        while (chunk := await s.read()) is not None:
            got += chunk.data
    return got


# -- exec ---------------------------------------------------------------------------------


async def test_exec_without_tty(node: Node, sleeper: str, v: Variant) -> None:
    url = await node.exec_url(sleeper, ["sh", "-c", "printf hello"])
    r = await asyncio.wait_for(client.run(url, **v.kw()), 60)
    assert (r.stdout, r.stderr, r.exit_code) == (b"hello", b"", 0)


async def test_exec_exit_code_3(node: Node, sleeper: str, v: Variant) -> None:
    url = await node.exec_url(sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    r = await asyncio.wait_for(client.run(url, **v.kw()), 60)
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")
    assert r.outcome.kind is OutcomeKind.EXIT_CODE  # NonZeroExitCode with an ExitCode cause
    assert r.exit_code == 3


async def test_exec_stdin_until_eof(node: Node, sleeper: str, v: Variant) -> None:
    url = await node.exec_url(sleeper, ["sh", "-c", "cat; echo done"], stdin=True)
    r = await asyncio.wait_for(client.run(url, input=b"abc\n" * 1000, **v.kw()), 60)
    assert (r.stdout, r.exit_code) == (b"abc\n" * 1000 + b"done\n", 0)


async def test_exec_tty_with_stdin(node: Node, sleeper: str, v: Variant) -> None:
    url = await node.exec_url(sleeper, ["sh"], stdin=True, stderr=False, tty=True)
    async with await client.open_command(url, stdin=True, tty=True, **v.kw()) as s:
        await s.write_stdin(b"echo $((6*7))\n")
        out = await read_until(s, b"42\r\n")
        assert b"echo $((6*7))" in out  # the terminal echoes what was typed
        await s.write_stdin(b"exit 5\n")
        await drain(s)
        outcome = await asyncio.wait_for(s.wait(), 60)
    assert (outcome.kind, outcome.exit_code) == (OutcomeKind.EXIT_CODE, 5)


async def test_exec_resize_visible_through_stty(node: Node, sleeper: str, v: Variant) -> None:
    url = await node.exec_url(sleeper, ["sh"], stdin=True, stderr=False, tty=True)
    async with await client.open_command(url, stdin=True, tty=True, **v.kw()) as s:
        for width, height in ((100, 40), (132, 25)):
            await s.resize(TerminalSize(width, height))
            # Resizes and input travel on different streams: wait for the size in the tty.
            size = f"{height} {width}"
            script = (
                f'until [ "$(stty size)" = "{size}" ]; do sleep 0.02; done; echo "<$(stty size)>"'
            )
            await s.write_stdin(script.encode() + b"\n")
            await read_until(s, f"<{size}>\r\n".encode())
        await s.write_stdin(b"exit\n")
        await drain(s)
        assert (await asyncio.wait_for(s.wait(), 60)).kind is OutcomeKind.SUCCESS


async def test_exec_of_a_missing_command_is_an_internal_error(
    node: Node, sleeper: str, v: Variant
) -> None:
    url = await node.exec_url(sleeper, ["/no/such/program"])
    r = await asyncio.wait_for(client.run(url, **v.kw()), 60)
    assert r.outcome.kind is OutcomeKind.INTERNAL
    assert "/no/such/program" in r.outcome.message


# -- attach -------------------------------------------------------------------------------


async def test_attach_to_sh_with_stdin_once(node: Node, pod: Pod, v: Variant) -> None:
    cid = await node.container(pod, f"sh-{v.name}", ["sh"], stdin=True, stdin_once=True)
    url = await node.attach_url(cid, stdin=True)
    async with await client.open_command(url, stdin=True, **v.kw()) as s:
        await s.write_stdin(b"echo hello; echo oops >&2\n")
        assert await read_until(s, b"hello\n", OutputStream.STDOUT) == b"hello\n"
        await s.close_stdin()  # stdin_once: the container's stdin closes, sh exits
        await drain(s)
        assert (await asyncio.wait_for(s.wait(), 60)).kind is OutcomeKind.SUCCESS
    st = await wait_exit(node.cli, cid, timeout=30)
    assert st.exit_code == 0


async def test_attach_sees_output_from_now_on_and_leaves_the_container_running(
    node: Node, pod: Pod, v: Variant
) -> None:
    cid = await node.container(
        pod,
        f"ticker-{v.name}",
        ["sh", "-c", "i=0; while :; do i=$((i+1)); echo t$i; sleep 0.05; done"],
    )
    seen = 0
    for _ in range(2):  # a second client attaches after the first went away
        url = await node.attach_url(cid)
        async with await client.open_command(url, **v.kw()) as s:
            lines = (await read_until(s, b"\n")).split(b"\n")[:-1]
            numbers = [int(line.removeprefix(b"t")) for line in lines]
            assert numbers[0] > seen  # nothing is replayed: only output written from now on
            seen = numbers[-1]
    await wait_state(node.cli, cid, pb.CONTAINER_RUNNING)


async def test_attach_to_a_tty_and_resize(node: Node, pod: Pod, v: Variant) -> None:
    if node.kind == "runsc":  # no tty containers to attach to: creating one is refused
        with pytest.raises(GRPCError) as err:
            await node.container(pod, f"tty-{v.name}", ["sh"], stdin=True, tty=True)
        assert err.value.status is Status.INVALID_ARGUMENT
        return
    cid = await node.container(pod, f"tty-{v.name}", ["sh"], stdin=True, tty=True)
    url = await node.attach_url(cid, stdin=True, stderr=False, tty=True)
    async with await client.open_command(url, stdin=True, tty=True, **v.kw()) as s:
        await s.resize(TerminalSize(90, 30))
        script = 'until [ "$(stty size)" = "30 90" ]; do sleep 0.02; done; echo "<$(stty size)>"'
        await s.write_stdin(script.encode() + b"\n")
        await read_until(s, b"<30 90>")
    await wait_state(node.cli, cid, pb.CONTAINER_RUNNING)  # detaching is not an exit


# -- port-forward -------------------------------------------------------------------------


async def test_port_forward_http_in_a_pod(node: Node, servers: Servers, fv: Variant) -> None:
    for _ in range(3):
        reply = await asyncio.wait_for(http_get(node, servers.pod, WEB_PORT, fv), 60)
        assert reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0]
        assert reply.endswith(b"\r\n\r\nhello-from-pod")


async def test_port_forward_to_port_80(node: Node, servers: Servers, fv: Variant) -> None:
    """A privileged port: on runsc (host network mode) the sandbox binds it as an
    unprivileged host process, which the pod's netns allows (ip_unprivileged_port_start)."""
    reply = await http_get(node, servers.pod, 80, fv)
    assert reply.endswith(b"\r\n\r\nhello-from-pod")


async def test_port_forward_to_a_closed_port_reports_it(
    node: Node, servers: Servers, fv: Variant
) -> None:
    url = await node.forward_url(servers.pod, [7])
    async with await client.open_port_forward(url, transport=fv.transport, ports=[7]) as pf:
        stream = await pf.connect(7)
        assert await asyncio.wait_for(stream.read(), 60) == b""
        message = await asyncio.wait_for(stream.error(), 60)
    assert message == f"error forwarding port 7 to pod {servers.pod}, uid : connection refused"


async def _send_big(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    block = LINE * (1 << 16)
    data = (block * (BIG // len(block) + 1))[:BIG]
    try:
        for i in range(0, BIG, len(block)):
            writer.write(data[i : i + len(block)])
            await writer.drain()
    finally:
        writer.close()


async def test_port_forward_256_mib_arrives_intact(
    node: Node, servers: Servers, fv: Variant
) -> None:
    """On runsc the source runs beside the sandbox, in the pod's netns: this gVisor's host
    network mode fails large sends out of the sandbox with EIO now and then (reproduced
    with a plain ``runsc run``), so a source inside it loses bytes whatever forwards them.
    Into the sandbox (the upload test below) it is sound."""

    async def download(stream: client.ForwardStream) -> tuple[int, str]:
        got = hashlib.sha256()
        n = 0
        while data := await stream.read():
            got.update(data)
            n += len(data)
        return n, got.hexdigest()

    port = SOURCE_PORT
    host_source: asyncio.Server | None = None
    if node.kind == "runsc":
        host_source = await node.serve_in_pod(servers.pod, HOST_SOURCE_PORT, _send_big)
        port = HOST_SOURCE_PORT
    try:
        n, digest = await forwarded(node, servers.pod, port, fv, download, timeout=300)
    finally:
        if host_source is not None:
            host_source.close()
            await host_source.wait_closed()
    want = hashlib.sha256((LINE * (BIG // len(LINE) + 1))[:BIG]).hexdigest()
    assert (n, digest) == (BIG, want)


@pytest.mark.parametrize("sv", [SPDY, TUNNEL], ids=["spdy", "spdy-in-ws"])
async def test_port_forward_up_then_half_close(node: Node, servers: Servers, sv: Variant) -> None:
    """Only SPDY (also tunnelled) can half-close a forwarded connection (WebSocket's channels
    cannot): the pod's nc sees the end of the input, so the connection ends and the hash is
    written.
    (UP, not BIG: hashing in gVisor's ptrace platform takes 40 s for 256 MiB.)"""
    await node.cli.exec_sync(servers.container, ["rm", "-f", "/tmp/up.sum"])
    block = hashlib.sha256(b"up").digest() * 32768  # 1 MiB

    async def upload(stream: client.ForwardStream) -> bytes:
        for _ in range(UP // len(block)):
            await stream.write(block)
        await stream.close_write()
        return await read_all(stream)

    assert await forwarded(node, servers.pod, SINK_PORT, sv, upload, timeout=300) == b""

    async def written() -> bytes:
        r = await node.cli.exec_sync(servers.container, ["cat", "/tmp/up.sum"])
        return r.stdout

    answer = await until(written, timeout=60, interval=0.1, what="the pod's hash")
    assert answer.split()[0].decode() == hashlib.sha256(block * (UP // len(block))).hexdigest()


async def test_port_forward_in_a_host_network_pod(node: Node, fv: Variant) -> None:
    if node.kind == "runsc":
        # gVisor cannot share the node's network namespace as asked: the pod is refused
        # (FAILED_PRECONDITION), so there is nothing to forward to.
        with pytest.raises(GRPCError) as err:
            await node.pod(f"hostnet-{fv.name}", host_network=True)
        assert err.value.status is Status.FAILED_PRECONDITION
        assert "host network" in str(err.value.message)
        return
    with socket.socket() as probe:  # a port that is free on the host right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pod = await node.pod(f"hostnet-{fv.name}", host_network=True)
    await node.container(pod, "web", ["sh", "-c", f"while :; do nc -l -p {port} -e /web; done"])
    reply = await http_get(node, pod[0], port, fv)
    assert reply.endswith(b"\r\n\r\nhello-from-pod")
    await node.cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]))
    await node.cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]))


async def test_exec_and_attach_to_an_exited_container_are_refused(node: Node, pod: Pod) -> None:
    cid = await node.container(pod, "short", ["sh", "-c", "read x"], stdin=True, stdin_once=True)
    url = await node.exec_url(cid, ["true"])
    await node.cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    for call in (
        node.cli.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)),
        node.cli.runtime.Attach(pb.AttachRequest(container_id=cid, stdout=True)),
    ):
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status is Status.FAILED_PRECONDITION
    # A URL issued while it ran does not start anything once it has exited.
    r = await asyncio.wait_for(client.run(url), 60)
    assert r.outcome.kind is OutcomeKind.INTERNAL
    assert "not running" in r.outcome.message
