"""Writable-layer usage: du-style bytes, inodes counted once, no symlink following."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cri_async.stats.fsusage import dir_usage, mountpoint_of


def test_dir_usage(tmp_path: Path) -> None:
    top = tmp_path / "upper"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_bytes(b"x" * 100_000)
    os.link(top / "a" / "b" / "f", top / "hard")
    (top / "sym").symlink_to(tmp_path)  # a loop if it were followed
    (top / "empty").touch()
    u = dir_usage(str(top))
    assert u.inodes_used == 6  # upper, a, b, f (= hard), sym, empty
    expected = sum(
        os.lstat(p).st_blocks * 512
        for p in (
            top,
            top / "a",
            top / "a" / "b",
            top / "a" / "b" / "f",
            top / "sym",
            top / "empty",
        )
    )
    assert u.used_bytes == expected
    assert u.used_bytes >= 100_000


def test_dir_usage_of_a_file_and_of_nothing(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert dir_usage(str(f)).inodes_used == 1
    with pytest.raises(FileNotFoundError):
        dir_usage(str(tmp_path / "missing"))


def test_mountpoint_of(tmp_path: Path) -> None:
    mp = mountpoint_of(str(tmp_path))
    assert os.path.ismount(mp)
    assert str(tmp_path.resolve()).startswith(mp)
    assert mountpoint_of("/") == "/"
    assert mountpoint_of("/proc/self") == "/proc"
