"""The real crictl against a real cri-async server on runc: ``crictl exec -it``, ``exec -i``,
``attach`` and ``port-forward`` (what the README walkthrough shows), with every installed
cri-tools release (v1.26.1 is the client-go critest vendors; v1.36.0 speaks WebSocket too).

crictl is not packaged by Debian, so these tests skip where no cri-tools release is
installed, also under CI=true (``make test`` cannot install it); the same behaviour is
covered without crictl by test_real_containers.py, which never skips under CI. Root, runc,
conmon and the registry tools are prerequisites as usual (skip locally, fail in CI)."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import struct
import termios
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from cri_async.api.runtime.v1 import api_pb2 as pb
from tests.integration.conftest import wait_exit
from tests.integration.streaming.realnode import WEB, Node, image, real_node
from tests.integration.streaming.test_crictl import CRICTLS, has_websocket

pytestmark = [
    pytest.mark.root,
    pytest.mark.registry,
    pytest.mark.asyncio(loop_scope="module"),
]

Pod = tuple[str, pb.PodSandboxConfig]
NAMES = itertools.count()


@pytest.fixture(scope="module")
def web_image() -> Iterator[str]:
    with image({"/web": WEB}) as ref:
        yield ref


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory, web_image: str) -> AsyncIterator[Node]:
    async with real_node("runc", tmp_path_factory.mktemp("crictl"), web_image) as n:
        yield n


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pod(node: Node) -> Pod:
    return await node.pod("crictl")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sleeper(node: Node, pod: Pod) -> str:
    return await node.container(pod, "sleeper", ["sleep", "100000"])


@pytest.fixture(params=CRICTLS, ids=lambda c: c.split("/")[-3] if "/opt/" in c else c)
def crictl(request: pytest.FixtureRequest) -> str:
    path: str = request.param
    return path


def argv(node: Node, crictl: str, *args: str) -> list[str]:
    return [crictl, "--runtime-endpoint", f"unix://{node.srv.socket_path}", *args]


async def run(
    node: Node, crictl: str, *args: str, stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    p = await asyncio.create_subprocess_exec(
        *argv(node, crictl, *args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(p.communicate(stdin), 60)
    assert p.returncode is not None
    return p.returncode, out, err


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_exec(node: Node, sleeper: str, crictl: str, transport: str) -> None:
    if transport == "websocket" and not has_websocket(crictl):
        pytest.skip(f"{crictl} has no WebSocket transport")
    via = ["-r", transport] if transport == "websocket" else []
    script = "printf hello; printf oops >&2"
    rc, out, err = await run(node, crictl, "exec", *via, sleeper, "sh", "-c", script)
    assert (rc, out) == (0, b"hello"), err
    assert err.endswith(b"oops")
    rc, _, err = await run(node, crictl, "exec", *via, sleeper, "sh", "-c", "exit 3")
    assert rc != 0 and b"command terminated with exit code 3" in err
    rc, out, _ = await run(
        node, crictl, "exec", "-i", *via, sleeper, "sh", "-c", "cat; echo done", stdin=b"abc"
    )
    assert (rc, out) == (0, b"abcdone\n")


async def test_exec_it_gets_the_terminal_and_its_size(
    node: Node, sleeper: str, crictl: str
) -> None:
    """``crictl exec -it`` wants a terminal: it gets a pty of 33 rows by 77 columns."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
    try:
        p = await asyncio.create_subprocess_exec(
            *argv(node, crictl, "exec", "-it", sleeper, "sh"),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        script = b'until [ "$(stty size)" = "33 77" ]; do sleep 0.02; done; echo "<$(stty size)>"\n'
        os.write(master, script + b"exit 7\n")
        rc = await asyncio.wait_for(p.wait(), 60)
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
    assert rc != 0 and b"exit code 7" in out


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_attach_to_sh(node: Node, pod: Pod, crictl: str, transport: str) -> None:
    if transport == "websocket" and not has_websocket(crictl):
        pytest.skip(f"{crictl} has no WebSocket transport")
    via = ["-r", transport] if transport == "websocket" else []
    name = f"sh-{next(NAMES)}"
    cid = await node.container(pod, name, ["sh"], stdin=True, stdin_once=True)
    rc, out, err = await run(node, crictl, "attach", "-i", *via, cid, stdin=b"echo hello\n")
    assert (rc, out) == (0, b"hello\n"), err
    assert (await wait_exit(node.cli, cid, timeout=30)).exit_code == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(node: Node, pod: Pod) -> str:
    return await node.container(pod, "web", ["nc", "-ll", "-p", "8080", "-e", "/web"])


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_port_forward(node: Node, pod: Pod, web: str, crictl: str, transport: str) -> None:
    """Over WebSocket crictl tunnels SPDY (client-go's tunnelling dialer)."""
    if transport == "websocket" and not has_websocket(crictl):
        pytest.skip(f"{crictl} has no WebSocket transport")
    via = ["-r", transport] if transport == "websocket" else []
    p = await asyncio.create_subprocess_exec(
        *argv(node, crictl, "port-forward", *via, pod[0], "0:8080"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 30)
        assert line.startswith(b"Forwarding from 127.0.0.1:"), line
        local = int(line.split(b" -> ")[0].rsplit(b":", 1)[1])
        for _ in range(3):  # several connections over one session
            r, w = await asyncio.open_connection("127.0.0.1", local)
            w.write(b"GET / HTTP/1.0\r\n\r\n")
            reply = await asyncio.wait_for(r.read(), 30)
            w.close()
            assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(b"hello-from-pod")
    finally:
        p.terminate()
        await p.wait()
