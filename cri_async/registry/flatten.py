"""Merge the deepest snapshots of a tall image into one, so that a container's overlay mount
stays within the kernel's limit of 500 lower directories.

``flatten(layers, dest)`` makes in the empty directory ``dest`` what overlayfs shows for the
snapshot directories ``layers`` stacked (the first is the bottom). The result is always the
bottom of a container's stack, so deletions are applied rather than recorded: whiteouts (0:0
character devices) and opaque directories hide what is below them and appear nowhere in
``dest``, and no ``trusted.overlay.*`` xattr is copied.

Lookup follows overlayfs: a name is decided by the topmost layer that has it. A whiteout hides
it; a non-directory is taken from that layer; a directory merges the same name in the layers
below, going down while each has a directory there, stopping after an opaque one or at a
layer where the name is not a directory (a file or whiteout there hides everything below).

Files, symbolic links, devices and FIFOs are hard links to the snapshots' own inodes (a
snapshot is never modified: containers write to their own upper directory), so they keep
owner, mode, xattrs and mtime, and a merged snapshot costs directories, not data. An inode
whose link count is exhausted (EMLINK) is copied instead (a symbolic link or device without
its xattrs). Directories are made anew with the owner, xattrs, mode and mtime of the topmost
layer's directory, as overlayfs reports them.

Safety: snapshots hold hostile content (symbolic links anywhere). Every directory is reached
from its snapshot's root one component at a time with ``O_NOFOLLOW | O_DIRECTORY``, links
never follow symbolic links, and everything in ``dest`` is created exclusively. One layer's
directory is open at a time, so a few descriptors suffice for any number of layers.

Synchronous and blocking: run it in a thread. On failure ``dest`` may hold partial content;
the caller deletes it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cri_async.registry.layertree import DIR_FLAGS, OPAQUE_XATTR

__all__ = ["FlattenStats", "flatten"]

_OVERLAY_XATTRS: Final = "trusted.overlay."
_NEW_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK: Final = 1 << 30

_Key = tuple[str, ...]  # a directory inside the merged view; () is its root


@dataclass(frozen=True, slots=True)
class FlattenStats:
    layers: int
    dirs: int  # directories made (the root included)
    links: int  # hard links to the snapshots' inodes
    copies: int  # inodes copied because their link count was exhausted
    bytes: int  # bytes copied (links cost none)

    @property
    def inodes(self) -> int:
        return self.dirs + self.copies


def flatten(
    layers: Sequence[Path], dest: Path, check: Callable[[], None] = lambda: None
) -> FlattenStats:
    """Merge the snapshot directories ``layers`` (bottom first) into the empty dir ``dest``.

    ``check`` is called before each directory; what it raises stops the merge.
    """
    if not layers:
        raise ValueError("nothing to flatten")
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if os.listdir(dest_fd):
            raise ValueError(f"flatten destination {str(dest)!r} is not empty")
        merger = _Merger([str(p) for p in layers], dest_fd)
        top_first = list(range(len(layers) - 1, -1, -1))
        todo: list[tuple[_Key, list[int]]] = [((), top_first)]
        while todo:
            check()
            key, contributing = todo.pop()
            todo += merger.merge_dir(key, contributing)
        return FlattenStats(len(layers), merger.dirs, merger.links, merger.copies, merger.bytes)
    finally:
        os.close(dest_fd)


def _walk(root_fd: int, key: _Key) -> int:
    """A new descriptor of directory ``key`` under ``root_fd``, reached without following links."""
    fd = os.dup(root_fd)
    try:
        for comp in key:
            nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _xattrs(fd: int) -> list[tuple[str, bytes]]:
    """The xattrs of an open file or directory, except overlayfs's own."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            return []
        raise
    return [(n, os.getxattr(fd, n)) for n in names if not n.startswith(_OVERLAY_XATTRS)]


def _apply_meta(fd: int, st: os.stat_result, xattrs: list[tuple[str, bytes]]) -> None:
    """Owner first (chown drops setuid/setgid and capabilities), then xattrs, mode, times."""
    os.fchown(fd, st.st_uid, st.st_gid)
    for name, value in xattrs:
        os.setxattr(fd, name, value)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))


class _Merger:
    def __init__(self, roots: list[str], dest_fd: int) -> None:
        self.roots = roots
        self.dest_fd = dest_fd
        self.dirs = self.links = self.copies = self.bytes = 0

    def _layer_dir(self, layer: int, key: _Key) -> int:
        root = os.open(self.roots[layer], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _walk(root, key)
        finally:
            os.close(root)

    def merge_dir(self, key: _Key, contributing: list[int]) -> list[tuple[_Key, list[int]]]:
        """Make directory ``key`` of the merged view from the layers (topmost first) that have
        a directory there: its non-directories now, its subdirectories empty. Returns the
        subdirectories to merge next, each with its own contributing layers."""
        out_fd = _walk(self.dest_fd, key)
        try:
            decided: set[str] = set()  # whited out or placed: lower layers do not matter
            subdirs: dict[str, list[int]] = {}
            closed: set[str] = set()  # subdirectories a lower non-directory cuts off
            meta: tuple[os.stat_result, list[tuple[str, bytes]]] | None = None
            for layer in contributing:
                fd = self._layer_dir(layer, key)
                try:
                    if meta is None:
                        meta = (os.fstat(fd), _xattrs(fd))
                    with os.scandir(fd) as entries:
                        for e in entries:
                            name = e.name
                            if name in decided or name in closed:
                                continue
                            st = e.stat(follow_symlinks=False)
                            below = subdirs.get(name)
                            if below is not None:
                                if stat.S_ISDIR(st.st_mode):
                                    below.append(layer)
                                else:
                                    closed.add(name)
                            elif stat.S_ISDIR(st.st_mode):
                                subdirs[name] = [layer]
                            else:
                                decided.add(name)
                                if not _is_whiteout(st):
                                    self.place(fd, name, out_fd, st)
                    opaque = _is_opaque(fd)
                finally:
                    os.close(fd)
                if opaque:
                    break
            for name in subdirs:
                os.mkdir(name, 0o700, dir_fd=out_fd)
            self.dirs += len(subdirs) if key else len(subdirs) + 1  # dest itself counts once
            assert meta is not None
            _apply_meta(out_fd, *meta)  # its entries are all there: the mtime stays
        finally:
            os.close(out_fd)
        return [((*key, name), layers) for name, layers in subdirs.items()]

    def place(self, src_fd: int, name: str, out_fd: int, st: os.stat_result) -> None:
        try:
            os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=out_fd, follow_symlinks=False)
            self.links += 1
        except OSError as e:
            if e.errno != errno.EMLINK:
                raise
            self.copy(src_fd, name, out_fd, st)

    def copy(self, src_fd: int, name: str, out_fd: int, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                dst = os.open(name, _NEW_FILE, 0o600, dir_fd=out_fd)
                try:
                    while os.copy_file_range(src, dst, _COPY_CHUNK):
                        pass
                    _apply_meta(dst, st, _xattrs(src))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self.bytes += st.st_size
        else:
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=out_fd)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=out_fd)
            else:
                raise OSError(errno.EMLINK, f"cannot copy {name!r} (mode {mode:o})")
            os.chown(name, st.st_uid, st.st_gid, dir_fd=out_fd, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(name, stat.S_IMODE(mode), dir_fd=out_fd)
            os.utime(
                name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=out_fd, follow_symlinks=False
            )
        self.copies += 1
