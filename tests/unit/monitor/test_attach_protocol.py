"""The pure parts of conmon's attach protocol and exec-attach command line."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from cri_async.core.streams import OutputChunk, OutputStream
from cri_async.monitor.attach import INPUT_CHUNK, decode_packet, input_packets
from cri_async.monitor.execattach import SessionFiles, conmon_argv


def test_packets_carry_their_stream_in_the_first_byte() -> None:
    assert decode_packet(b"\x02out") == OutputChunk(OutputStream.STDOUT, b"out")
    assert decode_packet(b"\x03err\n") == OutputChunk(OutputStream.STDERR, b"err\n")


@given(st.binary(max_size=3))
def test_empty_short_and_unknown_packets_are_skipped(packet: bytes) -> None:
    chunk = decode_packet(packet)
    if len(packet) >= 2 and packet[0] in (2, 3):
        assert chunk is not None and chunk.data == packet[1:]
    else:
        assert chunk is None


@given(st.binary(max_size=5 * INPUT_CHUNK), st.integers(1, 40000))
def test_input_is_cut_into_whole_packets(data: bytes, size: int) -> None:
    packets = input_packets(data, size)
    assert b"".join(packets) == data
    assert all(0 < len(p) <= size for p in packets)


def test_exec_attach_command_line() -> None:
    sf = SessionFiles(Path("/b/sessions/abc"))
    argv = conmon_argv(
        "conmon",
        cid="c1",
        session_id="abc",
        sf=sf,
        runtime_path="/usr/sbin/runc",
        runtime_args=["--root=/r"],
        socket_dir="/run/s",
        tty=True,
        stdin=True,
    )
    pairs = dict(itertools.pairwise(argv))  # each flag to the word after it
    assert argv[0] == "conmon"
    assert pairs["--api-version"] == "1"
    assert (pairs["-c"], pairs["-u"], pairs["-b"]) == ("c1", "abc", "/b/sessions/abc")
    assert pairs["-p"] == "/b/sessions/abc/run/exec.pid"
    assert pairs["--exec-process-spec"] == "/b/sessions/abc/process.json"
    assert pairs["--runtime-arg"] == "--root=/r"
    # The runtime's stderr is the process's: conmon's debug lines must not land there.
    assert pairs["--log-level"] in ("warning", "error")
    assert {"-e", "--exec-attach", "--sync", "-t", "-i"} <= set(argv)
    plain = conmon_argv(
        "conmon",
        cid="c1",
        session_id="abc",
        sf=sf,
        runtime_path="r",
        runtime_args=[],
        socket_dir="/s",
        tty=False,
        stdin=False,
    )
    assert "-t" not in plain and "-i" not in plain
