"""Exec over every transport: output, exit codes, tty, stdin, resize, start failures."""

from __future__ import annotations

import asyncio

import pytest

from cri_async.streaming import client
from cri_async.streaming.backend import Stdio, TerminalSize
from cri_async.streaming.remotecommand import OutcomeKind
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import ExecTarget
from tests.integration.streaming.conftest import Variant
from tests.support.hoststreams import HostStreamBackend

pytestmark = pytest.mark.socket

OUT_ERR = Stdio(stdout=True, stderr=True)


def exec_url(srv: StreamingServer, cmd: str, stdio: Stdio) -> str:
    return srv.issue(ExecTarget("ctr", ("sh", "-c", cmd), stdio))


async def test_exec_without_tty(server: StreamingServer, variant: Variant) -> None:
    url = exec_url(server, "printf hello", OUT_ERR)
    res = await asyncio.wait_for(client.run(url, **variant.kw()), 30)
    assert res.stdout == b"hello"
    assert res.stderr == b""
    assert res.outcome.kind is OutcomeKind.SUCCESS
    assert res.exit_code == 0


async def test_stdout_and_stderr_stay_apart(server: StreamingServer, variant: Variant) -> None:
    url = exec_url(server, "printf out; printf err >&2; printf more", OUT_ERR)
    res = await asyncio.wait_for(client.run(url, **variant.kw()), 30)
    assert (res.stdout, res.stderr) == (b"outmore", b"err")


async def test_exit_code_3_is_non_zero_exit_code(server: StreamingServer, variant: Variant) -> None:
    url = exec_url(server, "printf x; exit 3", OUT_ERR)
    res = await asyncio.wait_for(client.run(url, **variant.kw()), 30)
    assert res.outcome.kind is OutcomeKind.EXIT_CODE
    assert res.exit_code == 3
    assert res.stdout == b"x"


async def test_tty_with_stdin_echoes_and_reports_exit_code(
    server: StreamingServer, variant: Variant
) -> None:
    url = exec_url(server, "read x; echo got:$x; exit 5", Stdio(stdin=True, stdout=True, tty=True))
    async with await client.open_command(url, stdin=True, tty=True, **variant.kw()) as s:
        await s.write_stdin(b"abc\n")
        out = b""
        while (chunk := await asyncio.wait_for(s.read(), 30)) is not None:
            out += chunk.data
        outcome = await asyncio.wait_for(s.wait(), 30)
    # the terminal echoes the input and turns \n into \r\n
    assert b"abc\r\n" in out
    assert b"got:abc\r\n" in out
    assert outcome.kind is OutcomeKind.EXIT_CODE
    assert outcome.exit_code == 5


async def test_resize_is_visible_to_stty(server: StreamingServer, variant: Variant) -> None:
    # The command polls for the size it is told to expect, then prints it.
    script = 'until [ "$(stty size)" = "40 100" ]; do sleep 0.02; done; stty size'
    url = exec_url(server, script, Stdio(stdin=True, stdout=True, tty=True))
    async with await client.open_command(url, stdin=True, tty=True, **variant.kw()) as s:
        await s.resize(TerminalSize(width=100, height=40))
        out = b""
        while (chunk := await asyncio.wait_for(s.read(), 30)) is not None:
            out += chunk.data
        outcome = await asyncio.wait_for(s.wait(), 30)
    assert out == b"40 100\r\n"
    assert outcome.kind is OutcomeKind.SUCCESS


async def test_stdin_eof_reaches_the_process(server: StreamingServer, variant: Variant) -> None:
    if not variant.can_close_stdin:
        pytest.skip("v4 WebSocket has no way to signal stdin EOF")
    url = exec_url(server, "cat; echo done", Stdio(stdin=True, stdout=True, stderr=True))
    res = await asyncio.wait_for(client.run(url, input=b"abc", **variant.kw()), 30)
    assert res.stdout == b"abcdone\n"
    assert res.exit_code == 0


async def test_exec_does_not_wait_for_stdin_eof(server: StreamingServer, variant: Variant) -> None:
    # stdin stays open (as critest keeps it for 20 s); the session ends with the process.
    url = exec_url(server, "printf hello", Stdio(stdin=True, stdout=True, tty=True))
    res = await asyncio.wait_for(
        client.run(url, input=b"", close_stdin=False, tty=True, **variant.kw()), 30
    )
    assert res.stdout == b"hello"
    assert res.exit_code == 0


async def test_start_failure_is_internal_error(
    server: StreamingServer, backend: HostStreamBackend, variant: Variant
) -> None:
    url = server.issue(ExecTarget("ctr", ("/nonexistent/binary",), OUT_ERR))
    res = await asyncio.wait_for(client.run(url, **variant.kw()), 30)
    assert res.outcome.kind is OutcomeKind.INTERNAL
    assert "/nonexistent/binary" in res.outcome.message
    assert res.exit_code is None


async def test_large_output_arrives_whole(server: StreamingServer, variant: Variant) -> None:
    url = exec_url(server, "head -c 5000000 /dev/zero | tr '\\0' x", OUT_ERR)
    res = await asyncio.wait_for(client.run(url, **variant.kw()), 60)
    assert res.stdout == b"x" * 5_000_000
