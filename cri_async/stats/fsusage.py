"""Disk usage of a directory tree (a container's writable layer): blocking, walk-based.

Bytes are allocated blocks (``st_blocks * 512``, like ``du``), each inode is counted once
(hard links), symlinks are not followed and the walk stays on the starting filesystem.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DirUsage:
    used_bytes: int
    inodes_used: int


def dir_usage(path: str) -> DirUsage:
    """Raises FileNotFoundError when ``path`` itself is missing; entries that vanish during
    the walk are skipped."""
    top = os.lstat(path)
    dev = top.st_dev
    seen: set[int] = {top.st_ino}
    used = top.st_blocks * 512
    stack = [path] if stat.S_ISDIR(top.st_mode) else []
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_dev != dev or st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
                used += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return DirUsage(used_bytes=used, inodes_used=len(seen))


def mountpoint_of(path: str) -> str:
    """The mount point of the filesystem holding ``path``."""
    p = os.path.realpath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p
