"""Container root filesystems: an overlay of the image's snapshots plus a writable upper.

Legacy mount(2) silently truncates its option string at 4 KiB (platform.md row 1b), so
long lowerdir lists go through the new mount API, and every mount is checked against
/proc/self/mountinfo afterwards.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cri_async import linux

LEGACY_LIMIT = 3500  # stay clear of the 4096-byte page the kernel copies


class RootfsError(Exception):
    pass


def overlay_options(lowers: list[str], upper: str, work: str) -> str:
    return f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"


def _mount_sync(target: Path, lowers: list[str], upper: Path, work: Path) -> None:
    for p in (target, upper, work):
        p.mkdir(parents=True, exist_ok=True)
    if not lowers:
        raise RootfsError("an image without layers has no root filesystem")
    opts = overlay_options(lowers, str(upper), str(work))
    if len(opts) < LEGACY_LIMIT and not any(":" in d or "," in d for d in lowers):
        linux.mount("overlay", str(target), "overlay", 0, opts)
    else:
        linux.mount_new_api(
            "overlay",
            str(target),
            [("lowerdir+", lower) for lower in lowers]
            + [("upperdir", str(upper)), ("workdir", str(work))],
        )
    found = [m for m in linux.mountinfo() if m[0] == str(target)]
    if not found or found[-1][1] != "overlay" or f"upperdir={upper}" not in found[-1][3]:
        linux.umount(str(target))
        raise RootfsError(f"overlay at {target} did not mount as asked (got {found[-1:]})")


async def mount_overlay(target: Path, lowers: list[str], upper: Path, work: Path) -> None:
    """``lowers`` top-most first, as overlayfs wants them."""
    try:
        await asyncio.to_thread(_mount_sync, target, lowers, upper, work)
    except OSError as e:
        raise RootfsError(f"cannot mount the root filesystem at {target}: {e}") from None


async def unmount(target: Path) -> bool:
    return await asyncio.to_thread(linux.umount, str(target))


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) under ``path`` without following links (writable-layer usage)."""
    size = inodes = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            inodes += 1
            size += st.st_blocks * 512
    return size, inodes
