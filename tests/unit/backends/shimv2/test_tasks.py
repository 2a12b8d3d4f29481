"""TaskOutput: a container's output to its CRI log and to the attach sessions listening."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_async.backends.shimv2.tasks import TaskOutput
from cri_async.logs.crilog import Stream, join_records, parse_lines
from cri_async.logs.logfile import LogFile


class Listener:
    def __init__(self, fail: bool = False) -> None:
        self.got: list[tuple[Stream, bytes]] = []
        self.ended = 0
        self.fail = fail

    def write(self, stream: Stream, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken client")
        self.got.append((stream, data))

    def end(self) -> None:
        self.ended += 1


async def test_output_goes_to_the_log_then_to_listeners(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    out = TaskOutput(LogFile(str(path)))
    early = Listener()
    out.write(Stream.STDOUT, b"before\n")
    out.listen(early)
    late = Listener()
    out.write(Stream.STDERR, b"err\n")
    out.listen(late)
    out.write(Stream.STDOUT, b"tail")
    assert early.got == [(Stream.STDERR, b"err\n"), (Stream.STDOUT, b"tail")]
    assert late.got == [(Stream.STDOUT, b"tail")]
    out.unlisten(late)
    out.unlisten(late)  # twice is fine
    out.end()
    out.end()
    assert (early.ended, late.ended, out.ended.is_set()) == (1, 0, True)
    after = Listener()
    out.listen(after)  # the output is over: ended at once
    assert after.ended == 1
    out.log.close()
    logged = join_records(parse_lines(path.read_bytes()))
    assert logged[Stream.STDOUT] == b"before\ntail" and logged[Stream.STDERR] == b"err\n"


async def test_a_failing_listener_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    out = TaskOutput(LogFile(""))
    bad, good = Listener(fail=True), Listener()
    out.listen(bad)
    out.listen(good)
    out.write(Stream.STDOUT, b"a")
    out.write(Stream.STDOUT, b"b")
    assert good.got == [(Stream.STDOUT, b"a"), (Stream.STDOUT, b"b")]
    assert "dropping it" in caplog.text
    out.end()
    assert (bad.ended, good.ended) == (0, 1)
