"""Unpack one OCI image layer (an uncompressed tar stream) into an overlayfs lower directory.

``unpack_layer`` does for one layer what containerd's ``archive.Apply`` does with the overlay
whiteout converter (``pkg/archive/tar.go``, ``tar_opts_linux.go``): each layer goes into its own
empty directory (a *snapshot*) and overlayfs stacks the snapshots, so deletions are not applied
here but recorded the way overlayfs reads them (OCI image-spec ``layer.md``, "Whiteouts"):

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

Safety: nothing outside ``dest`` is ever created, modified or followed. Every entry is reached
from a file descriptor of ``dest`` one component at a time with ``O_NOFOLLOW | O_DIRECTORY``,
and each operation is relative to the parent's descriptor, so a symbolic link in a parent
position is refused whatever it points to (even inside the layer), and later entries cannot
redirect earlier checks. Directory descriptors are kept open between entries (a small cache,
keyed by path, since a tar groups entries by directory); an entry that removes a name first
closes every cached descriptor at or below it, and nothing else here moves or removes a
directory, so a cached descriptor always is the directory its path names, as a new walk would
find it. Refused with ``UnsafeLayer``, naming the entry: absolute names, ``..``
components, NUL bytes, a parent that is a symbolic link or not a directory, hard links whose
target is absolute, has ``..``, goes through a symbolic link, is a directory or was not created
by an earlier entry of this layer, devices when ``allow_devices`` is false, device numbers Linux
cannot represent, ids that do not fit ``uid_t``, multi-volume and other unknown entry types, a
``.wh.`` entry with no name after the prefix, and a corrupt tar stream ("corrupt layer: ...").

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
import shutil
import stat
import tarfile
from dataclasses import dataclass
from decimal import Decimal, DecimalException
from pathlib import Path
from typing import BinaryIO, Final, cast

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
OPAQUE_XATTR: Final = "trusted.overlay.opaque"

_XATTR_PAX_PREFIX: Final = "SCHILY.xattr."
_COPY_CHUNK: Final = 256 * 1024
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Linux's dev_t as the kernel keeps it: 12-bit major, 20-bit minor.
_MAX_MAJOR: Final = (1 << 12) - 1
_MAX_MINOR: Final = (1 << 20) - 1
# (uid_t)-1 means "leave unchanged" to chown, so the largest usable id is one less.
_MAX_ID: Final = (1 << 32) - 2
_MAX_MTIME_NS: Final = (1 << 63) - 1
_MAX_MTIME_S: Final = Decimal(_MAX_MTIME_NS).scaleb(-9)
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

# What tarfile raises on a malformed stream besides TarError (header parsing is not airtight).
_TAR_ERRORS: Final = (tarfile.TarError, EOFError, ValueError, OverflowError)
_GNUTYPE_MULTIVOL: Final = b"M"
_REGULAR: Final = frozenset(tarfile.REGULAR_TYPES)  # includes CONTTYPE and GNU sparse
_DEVICE_FMT: Final = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}

_Key = tuple[str, ...]  # a normalised path inside dest, one component per item; () is dest


class UnsafeLayer(ValueError):
    """The layer is hostile, corrupt or unsupported; the message names the entry and why.

    ``entry`` is the entry's name as found in the tar (``None`` for stream-level problems).
    """

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


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
) -> UnpackStats:
    """Unpack the uncompressed layer tar read from ``tar_stream`` into the empty dir ``dest``.

    Reads the stream once, front to back (only ``read`` is used). ``allow_devices=False``
    refuses character and block devices (whiteouts are always created); ``same_owner=False``
    leaves everything owned by the calling process. Raises ``UnsafeLayer`` for a bad layer and
    ``OSError`` for a host failure; in both cases the caller must delete ``dest``.
    """
    root_fd = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        if os.listdir(root_fd):
            raise ValueError(f"unpack destination {str(dest)!r} is not empty")
        unpacker = _Unpacker(
            root_fd, os.path.abspath(dest), allow_devices=allow_devices, same_owner=same_owner
        )
        return unpacker.run(tar_stream)
    finally:
        os.close(root_fd)


class _CountingReader:
    """The caller's stream, counting bytes: tarfile calls a zero-byte stream corrupt."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.count += len(data)
        return data


def _open_stream(reader: _CountingReader) -> tarfile.TarFile:
    return tarfile.open(
        fileobj=cast(BinaryIO, reader), mode="r|", encoding="utf-8", errors="surrogateescape"
    )


def _corrupt(e: Exception) -> UnsafeLayer:
    return UnsafeLayer(f"corrupt layer: {e}")


def _split(name: str, *, entry: str, what: str = "name") -> _Key:
    """Normalise a tar name into components; refuse absolute names, ``..`` and NUL."""
    if "\0" in name:
        raise UnsafeLayer(f"entry {entry!r}: {what} contains a NUL byte", entry=entry)
    if name.startswith("/"):
        raise UnsafeLayer(f"entry {entry!r}: absolute {what} {name!r}", entry=entry)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayer(f"entry {entry!r}: {what} {name!r} has a '..' component", entry=entry)
    return parts


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    """The entry's mtime in ns: exact from a PAX record, else the header's seconds.

    tarfile parses PAX times as floats (about 0.2 µs resolution today), so the record is read
    here. Times before the epoch or past what a 64-bit timespec in ns holds become the epoch.
    """
    raw = ti.pax_headers.get("mtime")
    try:
        seconds = Decimal(raw) if raw is not None else Decimal(ti.mtime)
        if not seconds.is_finite() or not 0 <= seconds <= _MAX_MTIME_S:
            return 0
        return min(int(seconds.scaleb(9)), _MAX_MTIME_NS)
    except (DecimalException, ValueError, TypeError, OverflowError):
        return 0


def _xattrs(ti: tarfile.TarInfo, entry: str) -> list[tuple[str, bytes]]:
    """The ``SCHILY.xattr.*`` PAX records of an entry, as (name, raw value)."""
    out = []
    for key, value in ti.pax_headers.items():
        if not key.startswith(_XATTR_PAX_PREFIX):
            continue
        name = key[len(_XATTR_PAX_PREFIX) :]
        if not name or "\0" in name:
            raise UnsafeLayer(f"entry {entry!r}: invalid xattr name {name!r}", entry=entry)
        if name.startswith("trusted."):
            log.warning("layer entry %r: xattr %s ignored (host namespace)", entry, name)
            continue
        # tarfile decoded the bytes as UTF-8 with surrogateescape; this gives them back.
        out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


class _Unpacker:
    def __init__(self, root_fd: int, root: str, *, allow_devices: bool, same_owner: bool) -> None:
        self.root_fd = root_fd
        self.root = root
        self.allow_devices = allow_devices
        self.same_owner = same_owner
        # Non-directories created by entries of this layer: the only valid hard-link targets.
        self.linkable: set[_Key] = set()
        # Names whited out by this layer: a directory created there must be opaque.
        self.whited_out: set[_Key] = set()
        self.dir_mtimes: list[tuple[_Key, int]] = []
        self.entries = self.regular_files = self.dirs = self.symlinks = self.hardlinks = 0
        self.devices = self.fifos = self.whiteouts = self.opaque_dirs = 0
        self.bytes = self.inodes = 0
        self.buf = memoryview(bytearray(_COPY_CHUNK))

    # -- driver -------------------------------------------------------------------------------

    def run(self, stream: BinaryIO) -> UnpackStats:
        counting = _CountingReader(stream)
        try:
            tf = _open_stream(counting)
        except tarfile.ReadError as e:
            if counting.count == 0:  # an empty stream is an empty layer, as for containerd
                return self.stats()
            raise _corrupt(e) from e
        except _TAR_ERRORS as e:
            raise _corrupt(e) from e
        with tf:
            # tarfile keeps every member it has read; a stream needs none of them back.
            members = cast(list[tarfile.TarInfo], vars(tf)["members"])
            while True:
                try:
                    ti = tf.next()
                except _TAR_ERRORS as e:
                    raise _corrupt(e) from e
                if ti is None:
                    break
                members.clear()
                self.entries += 1
                try:
                    self.entry(tf, ti)
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
            inodes=self.inodes,
        )

    def finish(self) -> None:
        """Set directory mtimes, in tar order (a later entry for the same directory wins)."""
        for key, ns in self.dir_mtimes:
            try:
                fd = self.open_dir(key, entry="", create=False)
            except (UnsafeLayer, OSError):
                continue  # replaced or removed by a later entry; never followed
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    # -- one entry ----------------------------------------------------------------------------

    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        name = ti.name
        key = _split(name, entry=name)
        kind = ti.type
        if kind == _GNUTYPE_MULTIVOL:
            raise UnsafeLayer(
                f"entry {name!r}: multi-volume archives are not supported", entry=name
            )
        if not (
            kind in _REGULAR
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

        base = key[-1]
        if any(p.startswith(WHITEOUT_META_PREFIX) for p in key[:-1]) or (
            base.startswith(WHITEOUT_META_PREFIX) and base != WHITEOUT_OPAQUE
        ):
            log.debug("layer entry %r skipped (aufs metadata)", name)
            return
        if base == WHITEOUT_OPAQUE:
            self.opaque(ti, key[:-1])
        elif base.startswith(WHITEOUT_PREFIX):
            self.whiteout(ti, key[:-1], base[len(WHITEOUT_PREFIX) :])
        elif kind in _REGULAR:
            self.regular(tf, ti, key)
        elif kind == tarfile.DIRTYPE:
            self.directory(ti, key)
        elif kind == tarfile.SYMTYPE:
            self.symlink(ti, key)
        elif kind == tarfile.LNKTYPE:
            self.hardlink(ti, key)
        else:
            self.special(ti, key)

    def regular(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, key: _Key) -> None:
        pfd = self.open_dir(key[:-1], entry=ti.name, create=True)
        try:
            self.clear(pfd, key, for_dir=False)
            fd = os.open(key[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
            self.inodes += 1
            self.linkable.add(key)
            try:
                self.copy_data(tf, ti, fd)
                self.apply_meta_fd(fd, ti)
                ns = _mtime_ns(ti)
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)
        finally:
            os.close(pfd)
        self.regular_files += 1
        self.bytes += ti.size

    def copy_data(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, fd: int) -> None:
        """Copy the member's content into ``fd`` through one bounded buffer.

        Sparse members (GNU and PAX sparse formats) are written region by region and the holes
        left as holes: a few bytes of header can declare terabytes of zeros.
        """
        try:
            src = tf.extractfile(ti)
        except _TAR_ERRORS as e:
            raise _corrupt(e) from e
        if src is None:  # not for regular types; kept for the type checker
            return
        # The unbuffered view: its seek only moves within the member (tarfile's buffered one
        # refuses to seek on a stream), and reading it past a hole seeks the stream forward.
        raw = cast(io.RawIOBase, cast(io.BufferedReader, src).raw)
        try:
            if ti.sparse is None:
                self.copy_range(raw, fd, 0, ti.size)
                return
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
            except _TAR_ERRORS as e:
                raise _corrupt(e) from e
            if not n:
                raise UnsafeLayer("corrupt layer: unexpected end of data")
            done = 0
            while done < n:
                done += os.pwrite(fd, buf[done:n], offset + done)
            offset += n
            length -= n

    def directory(self, ti: tarfile.TarInfo, key: _Key) -> None:
        if key:
            pfd = self.open_dir(key[:-1], entry=ti.name, create=True)
            try:
                existing = self.clear(pfd, key, for_dir=True)
                if existing is None:
                    os.mkdir(key[-1], 0o700, dir_fd=pfd)
                    self.inodes += 1
                fd = os.open(key[-1], _DIR_FLAGS, dir_fd=pfd)
            finally:
                os.close(pfd)
            try:
                if existing is None:
                    self.made_dir(fd, key)
                self.apply_meta_fd(fd, ti)
            finally:
                os.close(fd)
        else:
            self.apply_meta_fd(self.root_fd, ti)
        self.dir_mtimes.append((key, _mtime_ns(ti)))
        self.dirs += 1

    def symlink(self, ti: tarfile.TarInfo, key: _Key) -> None:
        target = ti.linkname
        if not target or "\0" in target:
            raise UnsafeLayer(f"entry {ti.name!r}: invalid symbolic link target", entry=ti.name)
        pfd = self.open_dir(key[:-1], entry=ti.name, create=True)
        try:
            self.clear(pfd, key, for_dir=False)
            os.symlink(target, key[-1], dir_fd=pfd)  # verbatim; resolved in the container
            self.inodes += 1
            self.linkable.add(key)
            self.apply_meta_at(pfd, key, ti, is_symlink=True)
        finally:
            os.close(pfd)
        self.symlinks += 1

    def hardlink(self, ti: tarfile.TarInfo, key: _Key) -> None:
        name = ti.name
        target = _split(ti.linkname, entry=name, what="hard link target")
        if not target:
            raise UnsafeLayer(f"entry {name!r}: hard link to the layer root", entry=name)
        if target == key:
            raise UnsafeLayer(f"entry {name!r}: hard link to itself", entry=name)
        if any(p.startswith(WHITEOUT_META_PREFIX) for p in target):
            raise UnsafeLayer(
                f"entry {name!r}: hard link into aufs metadata {ti.linkname!r} is not supported",
                entry=name,
            )
        pfd = self.open_dir(key[:-1], entry=name, create=True)
        try:
            # Remove first: the target may be below the name being replaced (then it is gone).
            self.clear(pfd, key, for_dir=False)
            tfd = self.open_dir(target[:-1], entry=name, create=False, what="hard link target")
            try:
                if target not in self.linkable:
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
            finally:
                os.close(tfd)
        finally:
            os.close(pfd)
        self.linkable.add(key)
        self.hardlinks += 1

    def special(self, ti: tarfile.TarInfo, key: _Key) -> None:
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
        pfd = self.open_dir(key[:-1], entry=name, create=True)
        try:
            self.clear(pfd, key, for_dir=False)
            os.mknod(key[-1], fmt | 0o600, dev, dir_fd=pfd)
            self.inodes += 1
            self.linkable.add(key)
            self.apply_meta_at(pfd, key, ti, is_symlink=False)
        finally:
            os.close(pfd)
        if fmt == stat.S_IFIFO:
            self.fifos += 1
        else:
            self.devices += 1

    def whiteout(self, ti: tarfile.TarInfo, parent: _Key, hidden: str) -> None:
        if hidden in ("", ".", ".."):  # layer.md: "implementations SHOULD return an error"
            raise UnsafeLayer(
                f"entry {ti.name!r}: whiteout without a name to delete", entry=ti.name
            )
        key = (*parent, hidden)
        pfd = self.open_dir(parent, entry=ti.name, create=True)
        try:
            st = self.lstat(pfd, hidden)
            if st is None:
                os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
                self.inodes += 1
                self.linkable.discard(key)
                if self.same_owner:
                    os.chown(hidden, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
            elif stat.S_ISDIR(st.st_mode):
                # This layer's own directory stays; only the lower layers' one is hidden.
                fd = os.open(hidden, _DIR_FLAGS, dir_fd=pfd)
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
            # Else this layer's own non-directory is there, and it already hides lower layers.
        finally:
            os.close(pfd)
        self.whited_out.add(key)
        self.whiteouts += 1

    def opaque(self, ti: tarfile.TarInfo, key: _Key) -> None:
        fd = self.open_dir(key, entry=ti.name, create=True)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        self.opaque_dirs += 1

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def clear(self, pfd: int, key: _Key, *, for_dir: bool) -> os.stat_result | None:
        """Make room for ``key`` (containerd's rule: remove unless dir over dir).

        Returns the stat of a directory that stays (``for_dir`` and a directory is there),
        else ``None`` once the name is free.
        """
        st = self.lstat(pfd, key[-1])
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return st
            shutil.rmtree(key[-1], dir_fd=pfd)  # fd-based, does not follow symlinks
            n = len(key)
            self.linkable = {k for k in self.linkable if k[:n] != key}
        else:
            os.unlink(key[-1], dir_fd=pfd)
            self.linkable.discard(key)
        return None

    def made_dir(self, fd: int, key: _Key) -> None:
        """A directory this layer just created: opaque where this layer whited the name out."""
        if key in self.whited_out:
            os.setxattr(fd, OPAQUE_XATTR, b"y")

    def open_dir(self, key: _Key, *, entry: str, create: bool, what: str = "parent") -> int:
        """Open directory ``key`` under dest without following any symbolic link.

        With ``create``, missing directories are made (0755, root) and a whiteout this layer
        put in the way is replaced by an opaque directory. Returns a new fd to close.
        """
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(key):
                sub = key[: i + 1]
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise UnsafeLayer(
                            f"entry {entry!r}: {what} {'/'.join(sub)!r} does not exist",
                            entry=entry,
                        ) from None
                    nfd = self.make_parent(fd, sub)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise UnsafeLayer(
                            f"entry {entry!r}: {what} {'/'.join(sub)!r} is a symbolic link",
                            entry=entry,
                        ) from None
                    if not (
                        create
                        and sub in self.whited_out
                        and stat.S_ISCHR(st.st_mode)
                        and st.st_rdev == 0
                    ):
                        raise UnsafeLayer(
                            f"entry {entry!r}: {what} {'/'.join(sub)!r} is not a directory",
                            entry=entry,
                        ) from None
                    os.unlink(comp, dir_fd=fd)
                    nfd = self.make_parent(fd, sub)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def make_parent(self, dir_fd: int, key: _Key) -> int:
        os.mkdir(key[-1], 0o755, dir_fd=dir_fd)
        self.inodes += 1
        fd = os.open(key[-1], _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o755)  # mkdir's mode went through the umask
            if self.same_owner:
                os.fchown(fd, 0, 0)
            self.made_dir(fd, key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def set_xattrs(self, target: int | str, ti: tarfile.TarInfo, mode: int) -> None:
        for name, value in _xattrs(ti, ti.name):
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

    def apply_meta_fd(self, fd: int, ti: tarfile.TarInfo) -> None:
        """Owner, xattrs and mode of a regular file or directory, through its fd."""
        if self.same_owner:
            os.fchown(fd, ti.uid, ti.gid)
        self.set_xattrs(fd, ti, os.fstat(fd).st_mode)
        os.fchmod(fd, ti.mode & 0o7777)

    def apply_meta_at(self, pfd: int, key: _Key, ti: tarfile.TarInfo, *, is_symlink: bool) -> None:
        """Owner, xattrs, mode (not on symlinks) and mtime of a node that cannot be opened."""
        base = key[-1]
        if self.same_owner:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        # setxattr has no dir_fd form; the parents were just walked without following links.
        mode = stat.S_IFLNK if is_symlink else stat.S_IFCHR
        self.set_xattrs(os.path.join(self.root, *key), ti, mode)
        if not is_symlink:
            os.chmod(base, ti.mode & 0o7777, dir_fd=pfd)  # the node we just made, not a link
        ns = _mtime_ns(ti)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
