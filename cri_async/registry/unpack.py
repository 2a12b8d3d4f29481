"""Unpack one OCI image layer (an uncompressed tar stream) into an overlayfs lower directory.

``unpack_layer`` does for one layer what containerd's ``archive.Apply`` does with the overlay
whiteout converter: each layer goes into its own empty directory (a *snapshot*) and overlayfs
stacks the snapshots, so deletions are not applied here but recorded the way overlayfs reads
them (OCI image-spec ``layer.md``, "Whiteouts"):

* ``dir/.wh.name`` becomes a character device 0:0 at ``dir/name``, owned like the whiteout entry.
  Whiteouts only hide lower layers, so when ``dir/name`` already holds an entry of this layer,
  that entry stays; a directory there is marked opaque instead, which hides the lower ``name``
  and keeps this layer's content. A directory this layer later creates where it whited a name
  out is opaque for the same reason (``.wh.d`` followed by ``d/`` means "a new, empty ``d``").
* ``dir/.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on ``dir`` (created if missing).
* Other ``.wh..wh.*`` names, and anything under such a directory (aufs metadata such as
  ``.wh..wh.plnk``), are skipped; a hard link into them is refused as unsupported.

Everything else is created as in the tar: regular files, directories, symbolic links (target
stored verbatim, never followed), hard links, FIFOs and (when ``allow_devices``) character and
block devices. An entry replaces whatever this layer already put at its name, except that a
directory over a directory only updates the metadata. Parents missing from the tar are created
0755 and owned by root. Metadata is applied in the order that keeps it intact: owner (``chown``
drops setuid/setgid and ``security.capability``), then ``SCHILY.xattr.*`` PAX records, then mode,
then mtime; directory mtimes are set after the last entry, since creating children changes them.
The ``.`` entry (or ``./``) sets the metadata of ``dest`` itself.

Safety: nothing outside ``dest`` is ever created, modified or followed: every path is reached
through ``LayerTree`` (``registry.layertree``), one component at a time without following
links, and every creation is exclusive (``O_EXCL``, ``mkdir``, ``mknod``, ``symlink``,
``link``), so were the bookkeeping ever wrong, the entry would fail, never overwrite or follow
anything. Refused with ``UnsafeLayer``, naming the entry: absolute names, ``..`` components,
NUL bytes, a parent that is a symbolic link or not a directory, hard links whose target is
absolute, has ``..``, goes through a symbolic link, is a directory or was not created by an
earlier entry of this layer, devices when ``allow_devices`` is false, device numbers Linux
cannot represent, ids that do not fit ``uid_t``, multi-volume and other unknown entry types, a
``.wh.`` entry with no name after the prefix, and a corrupt tar stream ("corrupt layer: ...",
from ``registry.tarstream``). ``max_entries`` bounds the number of tar members
(``LimitExceeded`` from ``registry.limits`` beyond it).

A new regular file is not chowned when it is already owned as its header says: uid and gid are
the process's euid and egid, and the directory's gid too (a setgid directory or a ``grpid``
mount hands that down instead). A new file has no setuid bit or capability for a chown to drop.

Errors: the first problem stops the unpack. ``UnsafeLayer`` means the layer itself is bad
(hostile, corrupt or unsupported; retrying will not help); ``OSError`` means the host failed
(disk full, I/O error, missing privilege). Either way ``dest`` may hold partial content, and
**the caller must delete ``dest``**; nothing outside it has been touched.

Deliberate differences from containerd:

* Absolute names and ``..`` components are refused (containerd cleans them and resolves them
  inside the root), and so are parents that are symbolic links (containerd resolves them inside
  the root). Layers written from a real filesystem (docker, buildkit, containerd, GNU tar)
  have none of these.
* Hard links get no metadata of their own: they share the inode the target's entry already set
  up, and a second ``chown`` would drop its setuid bit and file capabilities when the link header
  does not repeat them (GNU tar's do not).
* A whiteout naming an entry of the same layer follows layer.md (see above); containerd's
  overlay converter fails on it (``mknod``: file exists).
* The ``.`` entry sets ``dest``'s metadata, as docker does; containerd ignores it.
* Sparse members (GNU and PAX sparse formats) keep their holes.
* ``trusted.*`` xattrs in the tar are skipped with a warning, as containerd does: they belong to
  the host (``trusted.overlay.*`` steers overlayfs itself).
* Out-of-range mtimes become the epoch (containerd's ``boundTime``); atimes are set to mtimes.

Synchronous and blocking: callers run it in a worker thread. It never changes the umask.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, cast

from cri_async.registry.layertree import DIR_FLAGS, OPAQUE_XATTR, LayerTree
from cri_async.registry.limits import too_many_entries
from cri_async.registry.tarstream import (
    REGULAR_TYPES,
    TAR_ERRORS,
    Key,
    TarReader,
    UnsafeLayer,
    corrupt,
    mtime_ns,
    split_name,
)

__all__ = [
    "OPAQUE_XATTR",
    "WHITEOUT_META_PREFIX",
    "WHITEOUT_OPAQUE",
    "WHITEOUT_PREFIX",
    "UnpackStats",
    "UnsafeLayer",
    "unpack_layer",
]

log = logging.getLogger("cri_async.registry.unpack")

WHITEOUT_PREFIX: Final = ".wh."
WHITEOUT_META_PREFIX: Final = ".wh..wh."
WHITEOUT_OPAQUE: Final = ".wh..wh..opq"

_COPY_CHUNK: Final = 256 * 1024  # sparse members: one bounded buffer
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Linux's dev_t as the kernel keeps it: 12-bit major, 20-bit minor.
_MAX_MAJOR: Final = (1 << 12) - 1
_MAX_MINOR: Final = (1 << 20) - 1
# (uid_t)-1 means "leave unchanged" to chown, so the largest usable id is one less.
_MAX_ID: Final = (1 << 32) - 2
# OSErrors that a bad entry explains (a name too long, a link to something gone, an xattr the
# kernel rejects). They become UnsafeLayer; any other OSError is the host's and propagates.
_LAYER_ERRNOS: Final = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.ERANGE,
        errno.E2BIG,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.EEXIST,
        errno.ENOENT,
        errno.EMLINK,
        errno.ENOTEMPTY,
        errno.EOVERFLOW,
        errno.EFBIG,
    }
)
_GNUTYPE_MULTIVOL: Final = b"M"
_DEVICE_FMT: Final = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}


@dataclass(frozen=True, slots=True)
class UnpackStats:
    """What one unpack did. Counts are of tar entries by kind, except ``inodes``."""

    entries: int  # every tar member, including skipped aufs metadata
    regular_files: int
    dirs: int  # directory entries, including the ``.`` entry
    symlinks: int
    hardlinks: int
    devices: int  # character and block devices (whiteouts not included)
    fifos: int
    whiteouts: int  # ``.wh.<name>`` entries
    opaque_dirs: int  # ``.wh..wh..opq`` entries
    bytes: int  # sum of regular file sizes
    inodes: int  # filesystem objects created (incl. missing parents and whiteout devices)


def unpack_layer(
    tar_stream: BinaryIO,
    dest: Path,
    *,
    allow_devices: bool = True,
    same_owner: bool = True,
    max_entries: int | None = None,
) -> UnpackStats:
    """Unpack the uncompressed layer tar read from ``tar_stream`` into the empty dir ``dest``.

    Reads the stream once, front to back (only ``read`` is used; it may return fewer bytes than
    asked, and ``b""`` only at the end). ``allow_devices=False`` refuses character and block
    devices (whiteouts are always created); ``same_owner=False`` leaves everything owned by the
    calling process. Raises ``UnsafeLayer`` for a bad layer, ``LimitExceeded`` for a layer of
    more than ``max_entries`` tar members, and ``OSError`` for a host failure; in every case
    the caller must delete ``dest``.
    """
    root_fd = os.open(dest, DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        if os.listdir(root_fd):
            raise ValueError(f"unpack destination {str(dest)!r} is not empty")
        fs = LayerTree(root_fd, os.path.abspath(dest), same_owner=same_owner)
        try:
            unpacker = _Unpacker(fs, allow_devices=allow_devices, max_entries=max_entries)
            return unpacker.run(TarReader(tar_stream))
        finally:
            fs.close()
    finally:
        os.close(root_fd)


def _write_all(fd: int, view: memoryview) -> None:
    done = os.write(fd, view)
    while done < len(view):
        done += os.write(fd, view[done:])


class _Unpacker:
    """The entries of one layer, made in ``fs`` one after the other, with their metadata."""

    def __init__(self, fs: LayerTree, *, allow_devices: bool, max_entries: int | None) -> None:
        self.fs = fs
        self.allow_devices = allow_devices
        self.max_entries = max_entries
        self.same_owner = fs.same_owner
        self.dir_mtimes: list[tuple[Key, int]] = []
        # Who owns what we create: a new file's owner is (euid, egid), or the directory's gid
        # (setgid directory, grpid mount), so no chown is needed when all of them agree.
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.entries = self.regular_files = self.dirs = self.symlinks = self.hardlinks = 0
        self.devices = self.fifos = self.whiteouts = self.opaque_dirs = 0
        self.bytes = 0
        self.buf = memoryview(bytearray(_COPY_CHUNK))

    # -- driver -------------------------------------------------------------------------------

    def run(self, reader: TarReader) -> UnpackStats:
        while True:
            ti = reader.next()
            if ti is None:
                break
            self.entries += 1
            if self.max_entries is not None and self.entries > self.max_entries:
                raise too_many_entries(self.max_entries)
            try:
                self.entry(reader, ti)
            except OSError as e:
                if e.errno not in _LAYER_ERRNOS:
                    raise
                raise UnsafeLayer(f"entry {ti.name!r}: {e.strerror or e}", entry=ti.name) from e
        self.finish()
        return self.stats()

    def stats(self) -> UnpackStats:
        return UnpackStats(
            entries=self.entries,
            regular_files=self.regular_files,
            dirs=self.dirs,
            symlinks=self.symlinks,
            hardlinks=self.hardlinks,
            devices=self.devices,
            fifos=self.fifos,
            whiteouts=self.whiteouts,
            opaque_dirs=self.opaque_dirs,
            bytes=self.bytes,
            inodes=self.fs.inodes,
        )

    def finish(self) -> None:
        """Set directory mtimes, in tar order (a later entry for the same directory wins)."""
        for key, ns in self.dir_mtimes:
            try:
                fd = self.fs.open_dir(key, entry="", create=False)
            except (UnsafeLayer, OSError):
                continue  # replaced or removed by a later entry; never followed
            os.utime(fd, ns=(ns, ns))

    # -- one entry ----------------------------------------------------------------------------

    def entry(self, reader: TarReader, ti: tarfile.TarInfo) -> None:
        name = ti.name
        key = split_name(name, entry=name)
        kind = ti.type
        if kind == _GNUTYPE_MULTIVOL:
            raise UnsafeLayer(
                f"entry {name!r}: multi-volume archives are not supported", entry=name
            )
        if not (
            kind in REGULAR_TYPES
            or kind in _DEVICE_FMT
            or kind in (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE)
        ):
            raise UnsafeLayer(f"entry {name!r}: unsupported entry type {kind!r}", entry=name)
        if not 0 <= ti.uid <= _MAX_ID or not 0 <= ti.gid <= _MAX_ID:
            raise UnsafeLayer(f"entry {name!r}: owner {ti.uid}:{ti.gid} out of range", entry=name)

        if not key:
            if kind != tarfile.DIRTYPE:
                raise UnsafeLayer(f"entry {name!r}: the layer root must be a directory", entry=name)
            self.directory(ti, key)
            return

        if WHITEOUT_PREFIX in name:
            base = key[-1]
            if any(p.startswith(WHITEOUT_META_PREFIX) for p in key[:-1]) or (
                base.startswith(WHITEOUT_META_PREFIX) and base != WHITEOUT_OPAQUE
            ):
                log.debug("layer entry %r skipped (aufs metadata)", name)
                return
            if base == WHITEOUT_OPAQUE:
                self.opaque(ti, key[:-1])
                return
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(ti, key[:-1], base[len(WHITEOUT_PREFIX) :])
                return
        if kind in REGULAR_TYPES:
            self.regular(reader, ti, key)
        elif kind == tarfile.DIRTYPE:
            self.directory(ti, key)
        elif kind == tarfile.SYMTYPE:
            self.symlink(ti, key)
        elif kind == tarfile.LNKTYPE:
            self.hardlink(ti, key)
        else:
            self.special(ti, key)

    def regular(self, reader: TarReader, ti: tarfile.TarInfo, key: Key) -> None:
        if ti.size < 0:
            raise corrupt(f"entry {ti.name!r}: negative size")
        parent = self.fs.walk(key[:-1], entry=ti.name, create=True)
        pfd, pgid, _ = parent
        self.fs.clear(parent, key, for_dir=False)
        fd = os.open(key[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            self.fs.added(parent, key, is_dir=False)
            self.fs.linkable.add(key)
            if ti.sparse is None:
                if reader.tell() != ti.offset_data:
                    raise corrupt(f"entry {ti.name!r}: data not where the header says")
                for view in reader.data(ti.size):
                    _write_all(fd, view)
            else:
                self.copy_sparse(reader, ti, fd)
            # A new file has no setuid bit or capability for chown to drop, and is already
            # owned right when (uid, gid) are ours and its directory's gid is ours too.
            owned = ti.uid == self.euid and ti.gid == self.egid == pgid
            self.fs.apply_meta_fd(fd, ti, stat.S_IFREG, chown=not owned)
            ns = mtime_ns(ti)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.regular_files += 1
        self.bytes += ti.size

    def copy_sparse(self, reader: TarReader, ti: tarfile.TarInfo, fd: int) -> None:
        """Copy a sparse member (GNU and PAX sparse formats) region by region, holes left as
        holes: a few bytes of header can declare terabytes of zeros.

        tarfile's own member reader maps the regions onto the stream, as for ``extractfile``.
        """
        try:
            src = tarfile.TarFile.fileobject(cast(tarfile.TarFile, reader), ti)
        except TAR_ERRORS as e:
            raise corrupt(e) from e
        # The unbuffered view: its seek only moves within the member (tarfile's buffered one
        # refuses to seek on a stream), and reading it past a hole seeks the stream forward.
        raw = cast(io.RawIOBase, src.raw)
        try:
            for offset, length in cast(list[tuple[int, int]], ti.sparse):
                if 0 <= offset < ti.size and length > 0:
                    raw.seek(offset)
                    self.copy_range(raw, fd, offset, min(length, ti.size - offset))
            os.ftruncate(fd, ti.size)
        finally:
            src.close()

    def copy_range(self, raw: io.RawIOBase, fd: int, offset: int, length: int) -> None:
        buf = self.buf
        while length > 0:
            try:
                n = raw.readinto(buf[: min(length, len(buf))])
            except TAR_ERRORS as e:
                raise corrupt(e) from e
            if not n:
                raise UnsafeLayer("corrupt layer: unexpected end of data")
            done = 0
            while done < n:
                done += os.pwrite(fd, buf[done:n], offset + done)
            offset += n
            length -= n

    def directory(self, ti: tarfile.TarInfo, key: Key) -> None:
        if key:
            parent = self.fs.walk(key[:-1], entry=ti.name, create=True)
            pfd = parent[0]
            existing = self.fs.clear(parent, key, for_dir=True)
            if existing is None:
                os.mkdir(key[-1], 0o700, dir_fd=pfd)
                self.fs.added(parent, key, is_dir=True)
            fd = os.open(key[-1], DIR_FLAGS, dir_fd=pfd)
            try:
                if existing is None:
                    self.fs.made_dir(fd, key)
                self.fs.apply_meta_fd(fd, ti, stat.S_IFDIR)
            except BaseException:
                os.close(fd)
                raise
            self.fs.remember(key, fd)  # its files are likely next
        else:
            self.fs.apply_meta_fd(self.fs.root_fd, ti, stat.S_IFDIR)
            self.fs.root_dir = (self.fs.root_fd, os.fstat(self.fs.root_fd).st_gid, self.fs.tree)
        self.dir_mtimes.append((key, mtime_ns(ti)))
        self.dirs += 1

    def symlink(self, ti: tarfile.TarInfo, key: Key) -> None:
        target = ti.linkname
        if not target or "\0" in target:
            raise UnsafeLayer(f"entry {ti.name!r}: invalid symbolic link target", entry=ti.name)
        parent = self.fs.walk(key[:-1], entry=ti.name, create=True)
        pfd = parent[0]
        self.fs.clear(parent, key, for_dir=False)
        os.symlink(target, key[-1], dir_fd=pfd)  # verbatim; resolved in the container
        self.fs.added(parent, key, is_dir=False)
        self.fs.linkable.add(key)
        self.fs.apply_meta_at(pfd, key, ti, is_symlink=True)
        self.symlinks += 1

    def hardlink(self, ti: tarfile.TarInfo, key: Key) -> None:
        name = ti.name
        target = split_name(ti.linkname, entry=name, what="hard link target")
        if not target:
            raise UnsafeLayer(f"entry {name!r}: hard link to the layer root", entry=name)
        if target == key:
            raise UnsafeLayer(f"entry {name!r}: hard link to itself", entry=name)
        if any(p.startswith(WHITEOUT_META_PREFIX) for p in target):
            raise UnsafeLayer(
                f"entry {name!r}: hard link into aufs metadata {ti.linkname!r} is not supported",
                entry=name,
            )
        parent = self.fs.walk(key[:-1], entry=name, create=True)
        # Our own descriptor: resolving the target below may evict the parent's from the cache.
        pfd = os.dup(parent[0])
        parent = (pfd, parent[1], parent[2])
        try:
            # Remove first: the target may be below the name being replaced (then it is gone).
            self.fs.clear(parent, key, for_dir=False)
            tfd = self.fs.open_dir(target[:-1], entry=name, create=False, what="hard link target")
            if target not in self.fs.linkable:
                raise UnsafeLayer(
                    f"entry {name!r}: hard link target {ti.linkname!r} is not an earlier"
                    " entry of this layer",
                    entry=name,
                )
            st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(
                    f"entry {name!r}: hard link target {ti.linkname!r} is a directory",
                    entry=name,
                )
            os.link(target[-1], key[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            self.fs.added(parent, key, is_dir=False, new_inode=False)
        finally:
            os.close(pfd)
        self.fs.linkable.add(key)
        self.hardlinks += 1

    def special(self, ti: tarfile.TarInfo, key: Key) -> None:
        name = ti.name
        if ti.type == tarfile.FIFOTYPE:
            fmt, dev = stat.S_IFIFO, 0
        else:
            if not self.allow_devices:
                raise UnsafeLayer(f"entry {name!r}: device files are not allowed", entry=name)
            if not (0 <= ti.devmajor <= _MAX_MAJOR and 0 <= ti.devminor <= _MAX_MINOR):
                raise UnsafeLayer(
                    f"entry {name!r}: device number {ti.devmajor}:{ti.devminor} out of range",
                    entry=name,
                )
            fmt, dev = _DEVICE_FMT[ti.type], os.makedev(ti.devmajor, ti.devminor)
        parent = self.fs.walk(key[:-1], entry=name, create=True)
        pfd = parent[0]
        self.fs.clear(parent, key, for_dir=False)
        os.mknod(key[-1], fmt | 0o600, dev, dir_fd=pfd)
        self.fs.added(parent, key, is_dir=False)
        self.fs.linkable.add(key)
        self.fs.apply_meta_at(pfd, key, ti, is_symlink=False)
        if fmt == stat.S_IFIFO:
            self.fifos += 1
        else:
            self.devices += 1

    def whiteout(self, ti: tarfile.TarInfo, parent: Key, hidden: str) -> None:
        if hidden in ("", ".", ".."):  # layer.md: "implementations SHOULD return an error"
            raise UnsafeLayer(
                f"entry {ti.name!r}: whiteout without a name to delete", entry=ti.name
            )
        key = (*parent, hidden)
        pdir = self.fs.walk(parent, entry=ti.name, create=True)
        pfd = pdir[0]
        st = self.fs.lstat(pfd, hidden)
        if st is None:
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
            self.fs.added(pdir, key, is_dir=False)
            self.fs.linkable.discard(key)
            if self.same_owner:
                os.chown(hidden, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        elif stat.S_ISDIR(st.st_mode):
            # This layer's own directory stays; only the lower layers' one is hidden.
            fd = os.open(hidden, DIR_FLAGS, dir_fd=pfd)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
        # Else this layer's own non-directory is there, and it already hides lower layers.
        self.fs.whited_out.add(key)
        self.whiteouts += 1

    def opaque(self, ti: tarfile.TarInfo, key: Key) -> None:
        fd = self.fs.open_dir(key, entry=ti.name, create=True)
        os.setxattr(fd, OPAQUE_XATTR, b"y")
        self.opaque_dirs += 1
