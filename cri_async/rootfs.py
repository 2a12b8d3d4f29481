"""Container root filesystems: an overlay of the image's snapshots plus a writable upper,
and reading files inside one as the container would see them.

Legacy mount(2) silently truncates its option string at 4 KiB, so
long lowerdir lists go through the new mount API, and every mount is checked against
/proc/self/mountinfo afterwards.

A container in a user namespace of its own gets the image's files as owned by its root:
each lower layer is bound through an idmapped mount of the pod's user namespace, the
overlay is made of those (overlayfs keeps private clones of its lowers, so the idmapped
binds are detached right after), and the upper and work directories are chowned to the
namespace's root instead (an idmapped upper makes overlay's work dir fail with EOVERFLOW and
the mount silently read-only).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from cri_async import linux

LEGACY_LIMIT = 3500  # stay clear of the 4096-byte page the kernel copies
READ_LIMIT = 16 << 20  # bytes of one in-rootfs file we are willing to read (passwd, group)
MAX_LINKS = 40  # symlinks followed in one path, as the kernel's ELOOP limit


class RootfsError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Idmap:
    """Map the image's files into a user namespace (see the module's notes)."""

    userns: str  # the pinned user namespace
    uid: int  # host ids of its root: owner of the writable layer
    gid: int
    stage: Path  # an empty directory for the idmapped binds of the lowers


def overlay_options(lowers: list[str], upper: str, work: str) -> str:
    return f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"


def _mount_sync(
    target: Path, lowers: list[str], upper: Path, work: Path, idmap: Idmap | None
) -> None:
    for p in (target, upper, work):
        p.mkdir(parents=True, exist_ok=True)
    if not lowers:
        raise RootfsError("an image without layers has no root filesystem")
    if idmap is None:
        _mount_overlay(target, lowers, upper, work)
        return
    for p in (upper, work):
        os.chown(p, idmap.uid, idmap.gid)
    staged: list[str] = []
    fd = os.open(idmap.userns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i, lower in enumerate(lowers):
            bind = idmap.stage / str(i)
            bind.mkdir(parents=True, exist_ok=True)
            linux.idmapped_bind(lower, str(bind), fd)
            staged.append(str(bind))
        _mount_overlay(target, staged, upper, work)
    finally:
        os.close(fd)
        for path in staged:
            linux.umount(path)
        shutil.rmtree(idmap.stage, ignore_errors=True)


def _mount_overlay(target: Path, lowers: list[str], upper: Path, work: Path) -> None:
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


async def mount_overlay(
    target: Path, lowers: list[str], upper: Path, work: Path, idmap: Idmap | None = None
) -> None:
    """``lowers`` top-most first, as overlayfs wants them; ``idmap`` for a container in a
    user namespace of its own."""
    try:
        await asyncio.to_thread(_mount_sync, target, lowers, upper, work, idmap)
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


def read_in_root(root: Path, path: str, limit: int = READ_LIMIT) -> bytes | None:
    """The bytes of ``path`` inside the root filesystem ``root``, or None if it does not
    exist there.

    Symlinks resolve as if ``root`` were "/" (an absolute link or a run of ".." never
    leaves it), so an image cannot make us read a host file. Only a regular file of at
    most ``limit`` bytes is read; opening never blocks (a FIFO), and anything else raises
    RootfsError.
    """
    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = linux.openat2(
                rfd,
                path.lstrip("/"),
                os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY,
                linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS,
            )
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            why = os.strerror(e.errno or 0)
            raise RootfsError(f"cannot open {path} in the image: {why}") from None
    finally:
        os.close(rfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RootfsError(f"{path} in the image is not a regular file")
        if st.st_size > limit:
            raise RootfsError(f"{path} in the image is {st.st_size} bytes; at most {limit} read")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > limit:
                raise RootfsError(f"{path} in the image grew past {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def resolve_in_root(root: Path, path: str) -> str:
    """``path`` inside ``root`` with each symlink resolved as if ``root`` were "/".

    Components that do not exist are kept as they are, so the result names where a
    missing target belongs. Every component of the result below ``root`` that exists is
    a real directory (or the final entry), never a link.
    """
    pending = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        try:
            target = os.readlink(os.path.join(root, *resolved, part))
        except OSError:  # not a link, or missing
            resolved.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise RootfsError(f"{path} in the image: too many levels of symbolic links")
        if target.startswith("/"):
            resolved = []
        pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
    return "/" + "/".join(resolved)


def make_mount_target(root: Path, path: str, *, directory: bool) -> None:
    """Create the target of a bind mount inside ``root`` if it is missing (a directory, or
    an empty file), resolving the image's symlinks inside ``root``. The runtime then finds
    it where the container will see it (crun refuses a missing target behind a link)."""
    resolved = resolve_in_root(root, path)
    parts = [p for p in resolved.split("/") if p]
    if not parts:
        return
    cur = str(root)
    try:
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            last = i == len(parts) - 1
            if last and not directory:
                if not os.path.lexists(cur):
                    os.close(
                        os.open(cur, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY, 0o644)
                    )
            elif not os.path.lexists(cur):
                os.mkdir(cur, 0o755)
    except OSError as e:
        raise RootfsError(f"cannot create mount target {path} in the image: {e.strerror}") from None
