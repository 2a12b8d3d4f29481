"""dial: localhost:port in a network namespace (here the host's), IPv4 first."""

from __future__ import annotations

import asyncio
import os

import pytest

from cri_async.network.netnsdial import dial, in_netns
from tests.support.prereq import need_root


async def test_dials_loopback_and_reports_refusal() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello " + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await dial(None, port)
        writer.write(b"pod\n")
        assert await reader.read() == b"hello pod\n"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await dial(None, port)


def test_in_netns_runs_on_a_thread_of_its_own() -> None:
    need_root("setns needs CAP_SYS_ADMIN")
    own = os.readlink("/proc/thread-self/ns/net")
    seen = in_netns("/proc/self/ns/net", lambda: os.readlink("/proc/thread-self/ns/net"))
    assert seen == own
    with pytest.raises(FileNotFoundError):
        in_netns("/nonexistent/netns", lambda: None)
