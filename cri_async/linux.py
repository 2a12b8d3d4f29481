"""Thin ctypes wrappers for the few Linux syscalls the runtime needs (mounts, namespaces).

Synchronous and small: callers run them in a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long

MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
CLONE_NEWNET = 0x40000000

# x86_64 and aarch64 share these (asm-generic numbering for the new mount API).
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
SYS_OPENAT2 = 437
SYS_OPEN_TREE = 428
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_IDMAP = 0x00100000
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def umount(target: str, *, detach: bool = True) -> bool:
    """Unmount; False if ``target`` was not mounted (or does not exist)."""
    ret = _libc.umount2(target.encode(), MNT_DETACH if detach else 0)
    if ret < 0:
        err = ctypes.get_errno()
        if err in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            return False
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
    return True


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    _check(_libc.setns(fd, nstype), "setns")


def _syscall(nr: int, *args: object, what: str) -> int:
    return _check(int(_libc.syscall(nr, *args)), what)


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2): ``path`` relative to ``dirfd`` under the ``RESOLVE_*`` rules."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    return _syscall(
        SYS_OPENAT2,
        ctypes.c_int(dirfd),
        path.encode(),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
        what=f"openat2 {path}",
    )


def mount_new_api(fstype: str, target: str, options: list[tuple[str, str]]) -> None:
    """fsopen/fsconfig/fsmount/move_mount: no 4 KiB limit on the option string (one
    fsconfig call per option, e.g. one ``lowerdir+`` per overlay layer)."""
    fs = _syscall(SYS_FSOPEN, fstype.encode(), ctypes.c_uint(0), what=f"fsopen {fstype}")
    try:
        for key, value in options:
            _syscall(
                SYS_FSCONFIG,
                fs,
                FSCONFIG_SET_STRING,
                key.encode(),
                value.encode(),
                ctypes.c_int(0),
                what=f"fsconfig {key}",
            )
        _syscall(
            SYS_FSCONFIG,
            fs,
            FSCONFIG_CMD_CREATE,
            None,
            None,
            ctypes.c_int(0),
            what="fsconfig create",
        )
        mnt = _syscall(SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, ctypes.c_uint(0), what="fsmount")
        try:
            _syscall(
                SYS_MOVE_MOUNT,
                mnt,
                b"",
                AT_FDCWD,
                target.encode(),
                MOVE_MOUNT_F_EMPTY_PATH,
                what=f"move_mount {target}",
            )
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Bind ``source`` onto ``target`` through the mappings of the user namespace
    ``userns_fd``: a file owned by host id N shows there as owned by N's image in that
    namespace's mapping (open_tree, mount_setattr(MOUNT_ATTR_IDMAP), move_mount)."""
    tree = _syscall(
        SYS_OPEN_TREE,
        AT_FDCWD,
        source.encode(),
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
        what=f"open_tree {source}",
    )
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _syscall(
            SYS_MOUNT_SETATTR,
            tree,
            b"",
            ctypes.c_uint(AT_EMPTY_PATH),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            what=f"mount_setattr idmap {source}",
        )
        _syscall(
            SYS_MOVE_MOUNT,
            tree,
            b"",
            AT_FDCWD,
            target.encode(),
            MOVE_MOUNT_F_EMPTY_PATH,
            what=f"move_mount {target}",
        )
    finally:
        os.close(tree)


def mountinfo() -> list[tuple[str, str, str, str]]:
    """(mount point, fstype, source, super options) for each mount of this namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        fstype, source, opts = [*right.split(), "", "", ""][:3]
        out.append((_unescape(fields[4]), fstype, source, opts))
    return out


def _unescape(s: str) -> str:
    return (
        s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
    )


def is_mountpoint(path: str) -> bool:
    return any(m[0] == path for m in mountinfo())
