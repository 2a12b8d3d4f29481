"""Stdio FIFOs: opened without blocking, read by the loop, written, reopened, removed.

A plain file descriptor on the other end stands in for the shim."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from cri_async.backends.shimv2.stdio import ProcessIO
from cri_async.logs.crilog import OutputCapture, Stream


def _fifos(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if stat.S_ISFIFO(p.lstat().st_mode))


async def _spin(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_output_streams_reach_the_sink_until_the_writer_leaves(tmp_path: Path) -> None:
    io = ProcessIO.open(tmp_path / "io")
    assert _fifos(tmp_path / "io") == ["stderr", "stdout"]
    assert io.stdio.stdout == str(tmp_path / "io/stdout") and io.stdio.stdin == ""
    out = OutputCapture()
    await io.start(out.write)
    eof = asyncio.ensure_future(io.wait_eof())
    await _spin()
    assert not eof.done()  # no writer has come yet: no premature end of file
    # The "shim": opening for writing does not block because our reader is there.
    w_out = os.open(io.stdio.stdout, os.O_WRONLY | os.O_NONBLOCK)
    w_err = os.open(io.stdio.stderr, os.O_WRONLY | os.O_NONBLOCK)
    os.write(w_out, b"hello ")
    os.write(w_err, b"oops\n")
    os.write(w_out, b"world\n")
    os.close(w_out)
    os.close(w_err)
    await eof
    assert out.output(Stream.STDOUT) == b"hello world\n"
    assert out.output(Stream.STDERR) == b"oops\n"
    io.close()
    io.remove()
    assert not (tmp_path / "io").exists()


async def test_stdin_is_written_through_and_large_writes_wait(tmp_path: Path) -> None:
    io = ProcessIO.open(tmp_path / "io", stdin=True)
    assert _fifos(tmp_path / "io") == ["stderr", "stdin", "stdout"]
    reader = os.open(io.stdio.stdin, os.O_RDONLY | os.O_NONBLOCK)  # the shim's copy end
    big = os.urandom(1 << 20)  # far beyond the pipe's buffer
    writing = asyncio.ensure_future(io.write_stdin(big))
    got = bytearray()
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(reader, readable.set)
    try:
        while len(got) < len(big):
            await readable.wait()
            readable.clear()
            try:
                got += os.read(reader, 1 << 16)
            except BlockingIOError:
                continue
    finally:
        loop.remove_reader(reader)
    await writing
    assert bytes(got) == big
    io.close_stdin()
    assert os.read(reader, 10) == b""  # our end closed and no other writer: end of file
    os.close(reader)
    with pytest.raises(ValueError, match="no stdin"):
        await io.write_stdin(b"x")
    io.close()
    io.remove()


async def test_terminal_has_no_stderr(tmp_path: Path) -> None:
    io = ProcessIO.open(tmp_path / "t", terminal=True)
    assert io.stdio.stderr == "" and io.stdio.terminal
    assert _fifos(tmp_path / "t") == ["stdout"]
    io.close()
    io.remove()


async def test_reopen_reads_what_was_written_meanwhile(tmp_path: Path) -> None:
    """Our restart: the writer keeps its end, we reopen the same FIFOs and read on."""
    first = ProcessIO.open(tmp_path / "io")
    shim_out = os.open(first.stdio.stdout, os.O_WRONLY | os.O_NONBLOCK)
    shim_keep = os.open(first.stdio.stdout, os.O_RDONLY | os.O_NONBLOCK)  # as shims do
    first.close()
    os.write(shim_out, b"while you were away\n")
    again = ProcessIO.open(tmp_path / "io", create=False)
    out = OutputCapture()
    arrived = asyncio.Event()

    def sink(stream: Stream, data: bytes) -> None:
        out.write(stream, data)
        arrived.set()

    await again.start(sink)
    while out.output(Stream.STDOUT) != b"while you were away\n":
        await arrived.wait()
        arrived.clear()
    os.close(shim_out)
    os.close(shim_keep)
    again.close()
    again.remove()


def test_open_failure_removes_what_it_made(tmp_path: Path) -> None:
    (tmp_path / "io").mkdir()
    os.mkfifo(tmp_path / "io" / "stdin")  # in the way: mkfifo of stdin fails
    with pytest.raises(FileExistsError):
        ProcessIO.open(tmp_path / "io", stdin=True)
    assert _fifos(tmp_path / "io") == ["stdin"]  # only what it made itself is gone
