"""LogFile: CRI records from output chunks, reopening after rotation, failing writes."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from cri_async.logs.crilog import Stream, join_records, parse_lines
from cri_async.logs.logfile import LogFile


def _clock() -> itertools.count[int]:
    return itertools.count(1_700_000_000_000_000_000)


def test_records_per_stream_and_partial_tail_on_close(tmp_path: Path) -> None:
    path = tmp_path / "pod" / "c" / "0.log"
    clock = _clock()
    f = LogFile(str(path), clock=lambda: next(clock))
    f.write(Stream.STDOUT, b"hel")
    f.write(Stream.STDERR, b"oops\n")
    f.write(Stream.STDOUT, b"lo\nno newline")
    lines = path.read_bytes().splitlines()
    assert [line.split(b" ", 3)[1:] for line in lines] == [
        [b"stderr", b"F", b"oops"],
        [b"stdout", b"F", b"hello"],
    ]
    f.close()
    assert f.closed
    recs = list(parse_lines(path.read_bytes()))
    assert recs[-1].partial and recs[-1].content == b"no newline"
    assert join_records(recs) == {Stream.STDOUT: b"hello\nno newline", Stream.STDERR: b"oops\n"}
    f.close()  # idempotent


def test_reopen_continues_in_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    f = LogFile(str(path))
    f.write(Stream.STDOUT, b"before\nhalf ")
    rotated = tmp_path / "0.log.1"
    os.rename(path, rotated)
    f.write(Stream.STDOUT, b"still old\n")  # not reopened yet: goes to the renamed file
    f.reopen()
    f.write(Stream.STDOUT, b"after\n")
    f.close()
    old = join_records(parse_lines(rotated.read_bytes()))
    assert old[Stream.STDOUT] == b"before\nhalf still old\n"
    assert join_records(parse_lines(path.read_bytes()))[Stream.STDOUT] == b"after\n"


def test_reopen_failure_keeps_the_old_file(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    f = LogFile(str(d / "0.log"))
    os.rename(d / "0.log", tmp_path / "moved.log")
    d.rmdir()
    with pytest.raises(FileNotFoundError):
        f.reopen()
    f.write(Stream.STDOUT, b"kept\n")
    f.close()
    moved = join_records(parse_lines((tmp_path / "moved.log").read_bytes()))
    assert moved[Stream.STDOUT] == b"kept\n"


def test_empty_path_discards(tmp_path: Path) -> None:
    f = LogFile("")
    assert f.closed
    f.write(Stream.STDOUT, b"nowhere\n")
    f.reopen()
    f.close()
    assert list(tmp_path.iterdir()) == []


def test_failing_writes_are_dropped_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    f = LogFile(str(tmp_path / "0.log"))
    f.path = "/dev/full"
    f.reopen()
    f.write(Stream.STDOUT, b"lost\n")
    f.write(Stream.STDOUT, b"lost too\n")
    assert len([r for r in caplog.records if "dropping output" in r.message]) == 1
    f.close()
