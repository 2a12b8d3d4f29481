"""Attach over every transport: output written after attaching, stdin into the
container, stdin_once closing the container's stdin at client EOF (critest's attach), a
plain detach otherwise, and tty resize."""

from __future__ import annotations

import asyncio

import pytest

from cri_async.streaming import client
from cri_async.streaming.backend import OutputChunk, Stdio, TerminalSize
from cri_async.streaming.remotecommand import OutcomeKind
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import AttachTarget
from tests.integration.streaming.conftest import Variant
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket

ALL = Stdio(stdin=True, stdout=True, stderr=True)


async def read_until(session: client.CommandSession, needle: bytes) -> bytes:
    out = b""
    while needle not in out:
        chunk: OutputChunk | None = await asyncio.wait_for(session.read(), 30)
        assert chunk is not None, f"output ended before {needle!r}: {out!r}"
        out += chunk.data
    return out


async def test_attach_stdin_once_closes_container_stdin(
    server: StreamingServer, backend: HostStreamBackend, variant: Variant
) -> None:
    sh = await backend.add_container("sh", ["sh"])
    url = server.issue(AttachTarget("sh", ALL, stdin_once=True))
    async with await client.open_command(url, stdin=True, **variant.kw()) as s:
        await s.write_stdin(b"printf hello\n")
        assert await read_until(s, b"hello") == b"hello"
        await s.write_stdin(b"printf oops >&2\n")
        chunk = await asyncio.wait_for(s.read(), 30)
        assert chunk is not None
        assert (chunk.stream, chunk.data) == (client.OutputStream.STDERR, b"oops")
        if variant.can_close_stdin:
            await s.close_stdin()  # sh reads EOF and exits: the attach ends
        else:
            await s.write_stdin(b"exit\n")
        assert await asyncio.wait_for(s.read(), 30) is None
        outcome = await asyncio.wait_for(s.wait(), 30)
    assert outcome.kind is OutcomeKind.SUCCESS
    assert await asyncio.wait_for(sh.wait(), 30) == 0


async def test_attach_without_stdin_once_only_detaches(
    server: StreamingServer, backend: HostStreamBackend, variant: Variant
) -> None:
    if not variant.can_close_stdin:
        pytest.skip("v4 WebSocket has no way to signal stdin EOF")
    sh = await backend.add_container("sh", ["sh"])
    url = server.issue(AttachTarget("sh", ALL, stdin_once=False))
    async with await client.open_command(url, stdin=True, **variant.kw()) as s:
        await s.write_stdin(b"printf one\n")
        await read_until(s, b"one")
        await s.close_stdin()
        assert await asyncio.wait_for(s.read(), 30) is None
        assert (await asyncio.wait_for(s.wait(), 30)).kind is OutcomeKind.SUCCESS
    # the container still runs and takes input from the next attach
    assert sh.proc is not None
    assert sh.proc.returncode is None
    url = server.issue(AttachTarget("sh", ALL, stdin_once=True))
    async with await client.open_command(url, stdin=True, **variant.kw()) as s:
        await s.write_stdin(b"printf two; exit 4\n")
        assert await read_until(s, b"two") == b"two"
        assert (await asyncio.wait_for(s.wait(), 30)).kind is OutcomeKind.SUCCESS
    assert await asyncio.wait_for(sh.wait(), 30) == 4


async def test_attach_sees_only_new_output_and_ends_with_the_container(
    server: StreamingServer, backend: HostStreamBackend, variant: Variant
) -> None:
    sh = await backend.add_container("sh", ["sh"])
    watcher = sh.subscribe()
    await sh.write(b"printf before\n")
    chunk = await asyncio.wait_for(watcher.get(), 30)
    assert chunk is not None
    assert chunk.data == b"before"  # written and gone before the attach
    sh.subscribers.discard(watcher)
    url = server.issue(AttachTarget("sh", Stdio(stdout=True, stderr=True), stdin_once=False))
    async with await client.open_command(url, stdin=False, **variant.kw()) as s:
        await sh.write(b"printf after; exit 0\n")
        out = b""
        while (chunk := await asyncio.wait_for(s.read(), 30)) is not None:
            out += chunk.data
        assert (await asyncio.wait_for(s.wait(), 30)).kind is OutcomeKind.SUCCESS
    assert out == b"after"


async def test_attach_tty_resize(
    server: StreamingServer, backend: HostStreamBackend, variant: Variant
) -> None:
    await backend.add_container("tty", ["sh"], tty=True)
    url = server.issue(AttachTarget("tty", Stdio(stdin=True, stdout=True, tty=True), False))
    async with await client.open_command(url, stdin=True, tty=True, **variant.kw()) as s:
        await s.resize(TerminalSize(width=132, height=50))
        await s.write_stdin(
            b'until [ "$(stty size)" = "50 132" ]; do sleep 0.02; done; echo "<$(stty size)>"\n'
        )
        assert b"<50 132>" in await read_until(s, b"<50 132>")
        await s.write_stdin(b"exit\n")
        while await asyncio.wait_for(s.read(), 30) is not None:
            pass
        assert (await asyncio.wait_for(s.wait(), 30)).kind is OutcomeKind.SUCCESS


async def test_attach_to_a_missing_container_is_internal_error(
    server: StreamingServer, variant: Variant
) -> None:
    url = server.issue(AttachTarget("gone", ALL, stdin_once=False))
    res = await asyncio.wait_for(client.run(url, input=b"", **variant.kw()), 30)
    assert res.outcome.kind is OutcomeKind.INTERNAL
    assert "gone" in res.outcome.message
