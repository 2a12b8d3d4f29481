"""What one unpack has created under its destination, and safe access to its directories.

``LayerTree`` is the unpacker's view of ``dest`` (``registry.unpack``): which names this layer
created (a tree of nested dicts; dest starts empty, so a name not in it does not exist and
needs no ``lstat`` before it is created), which are valid hard-link targets, which it whited
out, and the directories under dest reached safely.

Safety: every directory is reached from a descriptor of dest one component at a time with
``O_NOFOLLOW | O_DIRECTORY``, and every operation is relative to the parent's descriptor, so a
symbolic link in a parent position is refused (``UnsafeLayer``) whatever it points to, and
later entries cannot redirect earlier checks.

Speed: directory descriptors stay open between entries in a small cache keyed by path (a tar
groups entries by directory); a walk starts at the deepest cached ancestor. Only removing a
name changes what a path under dest names (nothing here renames, and creating needs a free
name), and every removal first closes the cached descriptors at and below that name; so a
cached descriptor is always what a new walk would open. Even a stale one could only be a
directory that was inside dest: nothing moves directories, and nothing can be created in a
removed one (the kernel says ENOENT). At most ``_DIR_CACHE`` descriptors are held.

Metadata from a tar header (owner, ``SCHILY.xattr.*`` records, mode, mtime) is applied here
too, through the node's own descriptor or relative to its parent's, in the order that keeps
it intact: ``chown`` first (it drops setuid/setgid and ``security.capability``).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from typing import Any, Final

from cri_async.registry.tarstream import Key, UnsafeLayer, mtime_ns, pax_xattrs

__all__ = ["DIR_FLAGS", "OPAQUE_XATTR", "Dir", "LayerTree"]

log = logging.getLogger("cri_async.registry.unpack")

OPAQUE_XATTR: Final = "trusted.overlay.opaque"
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Open directory descriptors kept between entries. Entries of one directory come together in
# a tar, so a few suffice; the cap bounds what one unpack holds of the process's descriptors.
_DIR_CACHE: Final = 32

# What this layer created under dest, as nested dicts: name -> the directory's own dict, or None
# for a non-directory. Dest starts empty, so a name that is not here does not exist.
_Tree = dict[str, Any]
# An open directory under dest: (descriptor, its gid, its _Tree node or None if not known).
Dir = tuple[int, int, _Tree | None]


class LayerTree:
    """Dest of one unpack: what this layer made there, and its directories reached safely."""

    def __init__(self, root_fd: int, root: str, *, same_owner: bool) -> None:
        self.root_fd = root_fd
        self.root = root
        self.same_owner = same_owner
        # Non-directories created by entries of this layer: the only valid hard-link targets.
        self.linkable: set[Key] = set()
        # Names whited out by this layer: a directory created there must be opaque.
        self.whited_out: set[Key] = set()
        # Everything created under dest so far (dest started empty): a name missing here needs
        # no lstat before it is created (creation is exclusive anyway: O_EXCL, mkdir, mknod...).
        self.tree: _Tree = {}
        # Open descriptors of directories under dest, by path, least recently used first. Each
        # was reached from dest one component at a time with O_NOFOLLOW | O_DIRECTORY (or made
        # by mkdir there); `removed` closes those at or below a name before it is reused.
        self.open_dirs: dict[Key, Dir] = {}
        self.root_dir: Dir = (root_fd, os.fstat(root_fd).st_gid, self.tree)
        self.inodes = 0  # filesystem objects created

    def close(self) -> None:
        dirs = list(self.open_dirs.values())
        self.open_dirs.clear()
        for fd, _, _ in dirs:
            os.close(fd)

    @staticmethod
    def lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def clear(self, parent: Dir, key: Key, *, for_dir: bool) -> os.stat_result | None:
        """Make room for ``key`` in ``parent`` (containerd's rule: remove unless dir over dir).

        Returns the stat of a directory that stays (``for_dir`` and a directory is there),
        else ``None`` once the name is free.
        """
        pfd, _, node = parent
        if node is not None and key[-1] not in node:
            return None  # never created by this layer, so not there: dest started empty
        st = self.lstat(pfd, key[-1])
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return st
            self.removed(key)
            shutil.rmtree(key[-1], dir_fd=pfd)  # fd-based, does not follow symlinks
            n = len(key)
            self.linkable = {k for k in self.linkable if k[:n] != key}
        else:
            self.removed(key)
            os.unlink(key[-1], dir_fd=pfd)
            self.linkable.discard(key)
        return None

    def node(self, key: Key) -> _Tree | None:
        """The tree of what this layer made in directory ``key``, if ``key`` is one."""
        node: _Tree | None = self.tree
        for comp in key:
            node = node.get(comp)  # type: ignore[union-attr]
            if node is None:
                return None
        return node

    def added(self, parent: Dir, key: Key, *, is_dir: bool, new_inode: bool = True) -> None:
        """``key`` was just created in ``parent`` (a hard link makes no new inode)."""
        node = parent[2]
        if node is not None:
            node[key[-1]] = {} if is_dir else None
        if new_inode:
            self.inodes += 1

    def removed(self, key: Key) -> None:
        """``key`` is about to be removed: forget it, what is below it, and their descriptors.

        Called before the removal, so that even a failed removal leaves no stale entry.
        """
        node = self.node(key[:-1])
        if node is not None:
            node.pop(key[-1], None)
        n = len(key)
        for k in [k for k in self.open_dirs if k[:n] == key]:
            os.close(self.open_dirs.pop(k)[0])

    def made_dir(self, fd: int, key: Key) -> None:
        """A directory this layer just created: opaque where this layer whited the name out."""
        if key in self.whited_out:
            os.setxattr(fd, OPAQUE_XATTR, b"y")

    def remember(self, key: Key, fd: int) -> Dir:
        """Keep ``fd``, a directory opened without following links at ``key``, in the cache.

        The least recently used one is closed beyond ``_DIR_CACHE``; never ``fd`` itself.
        """
        try:
            entry = (fd, os.fstat(fd).st_gid, self.node(key))
        except BaseException:
            os.close(fd)
            raise
        dirs = self.open_dirs
        old = dirs.pop(key, None)
        if old is not None:
            os.close(old[0])
        dirs[key] = entry
        if len(dirs) > _DIR_CACHE:
            os.close(dirs.pop(next(iter(dirs)))[0])
        return entry

    def open_dir(self, key: Key, *, entry: str, create: bool, what: str = "parent") -> int:
        """The descriptor of ``walk``: the same rules apply."""
        return self.walk(key, entry=entry, create=create, what=what)[0]

    def walk(self, key: Key, *, entry: str, create: bool, what: str = "parent") -> Dir:
        """Directory ``key`` under dest, reached without following any link.

        With ``create``, missing directories are made (0755, root) and a whiteout this layer
        put in the way is replaced by an opaque directory. The descriptor belongs to the cache:
        do not close it, and do not use it after the next ``walk`` or removal.
        """
        if not key:
            return self.root_dir
        dirs = self.open_dirs
        found = dirs.get(key)
        if found is not None:
            dirs[key] = dirs.pop(key)  # most recently used
            return found
        # Start from the deepest cached ancestor (or dest), then one component at a time.
        i = len(key) - 1
        start = self.root_fd
        while i > 0:
            cached = dirs.get(key[:i])
            if cached is not None:
                start = cached[0]
                break
            i -= 1
        fd = start
        try:
            for j in range(i, len(key)):
                nfd = self.open_child(fd, key[: j + 1], entry=entry, create=create, what=what)
                if fd != start:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != start:
                os.close(fd)
            raise
        return self.remember(key, fd)

    def open_child(self, fd: int, sub: Key, *, entry: str, create: bool, what: str) -> int:
        """Open directory ``sub[-1]`` in ``fd`` (directory ``sub[:-1]``) with O_NOFOLLOW."""
        comp = sub[-1]
        try:
            return os.open(comp, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise UnsafeLayer(
                    f"entry {entry!r}: {what} {'/'.join(sub)!r} does not exist", entry=entry
                ) from None
            return self.make_parent(fd, sub)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayer(
                    f"entry {entry!r}: {what} {'/'.join(sub)!r} is a symbolic link", entry=entry
                ) from None
            if not (
                create and sub in self.whited_out and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            ):
                raise UnsafeLayer(
                    f"entry {entry!r}: {what} {'/'.join(sub)!r} is not a directory", entry=entry
                ) from None
            self.removed(sub)
            os.unlink(comp, dir_fd=fd)
            return self.make_parent(fd, sub)

    def make_parent(self, dir_fd: int, key: Key) -> int:
        os.mkdir(key[-1], 0o755, dir_fd=dir_fd)
        node = self.node(key[:-1])
        if node is not None:
            node[key[-1]] = {}
        self.inodes += 1
        fd = os.open(key[-1], DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o755)  # mkdir's mode went through the umask
            if self.same_owner:
                os.fchown(fd, 0, 0)
            self.made_dir(fd, key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_parents(self, key: Key, *, entry: str) -> None:
        """Walk to ``key``'s parent from dest, one component at a time, without the cache."""
        fd = os.dup(self.root_fd)
        try:
            for i in range(1, len(key)):
                nfd = self.open_child(fd, key[:i], entry=entry, create=False, what="parent")
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)

    # -- metadata from tar headers ---------------------------------------------------------

    def set_xattrs(self, target: int | str, ti: tarfile.TarInfo, mode: int) -> None:
        for name, value in pax_xattrs(ti, ti.name):
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENOTSUP or (
                    e.errno == errno.EPERM
                    and name.startswith("user.")
                    and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
                ):
                    # user.* exists only on regular files and directories (xattr(7)).
                    log.warning("layer entry %r: xattr %s ignored: %s", ti.name, name, e.strerror)
                    continue
                raise

    def apply_meta_fd(self, fd: int, ti: tarfile.TarInfo, fmt: int, *, chown: bool = True) -> None:
        """Owner, xattrs and mode of a regular file or directory (``fmt``), through its fd."""
        if self.same_owner and chown:
            os.fchown(fd, ti.uid, ti.gid)
        if ti.pax_headers:
            self.set_xattrs(fd, ti, fmt)
        os.fchmod(fd, ti.mode & 0o7777)

    def apply_meta_at(self, pfd: int, key: Key, ti: tarfile.TarInfo, *, is_symlink: bool) -> None:
        """Owner, xattrs, mode (not on symlinks) and mtime of a node that cannot be opened."""
        base = key[-1]
        if self.same_owner:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        if ti.pax_headers and pax_xattrs(ti, ti.name):
            # setxattr has no dir_fd form: walk the parents again, uncached and without
            # following links, right before the kernel resolves the path.
            self.check_parents(key, entry=ti.name)
            mode = stat.S_IFLNK if is_symlink else stat.S_IFCHR
            self.set_xattrs(os.path.join(self.root, *key), ti, mode)
        if not is_symlink:
            os.chmod(base, ti.mode & 0o7777, dir_fd=pfd)  # the node we just made, not a link
        ns = mtime_ns(ti)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
