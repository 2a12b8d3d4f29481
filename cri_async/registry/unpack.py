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
redirect earlier checks. Refused with ``UnsafeLayer``, naming the entry: absolute names, ``..``
components, NUL bytes, a parent that is a symbolic link or not a directory, hard links whose
target is absolute, has ``..``, goes through a symbolic link, is a directory or was not created
by an earlier entry of this layer, devices when ``allow_devices`` is false, device numbers Linux
cannot represent, ids that do not fit ``uid_t``, multi-volume and other unknown entry types, a
``.wh.`` entry with no name after the prefix, and a corrupt tar stream ("corrupt layer: ...").

Speed without weaker checks (a layer of 10,000 small files is mostly per-entry overhead):

* Directory descriptors, each reached as above, stay open between entries in a small cache
  keyed by path (a tar groups entries by directory); a walk starts at the deepest cached
  ancestor. Only removing a name changes what a path under dest names (nothing here renames,
  and creating needs a free name), and every removal first closes the cached descriptors at
  and below that name; so a cached descriptor is always what a new walk would open. Even a
  stale one could only be a directory that was inside dest: nothing moves directories, and
  nothing can be created in a removed one (the kernel says ENOENT).
* Dest starts empty, so a name this layer has not created (tracked as a tree) does not exist
  and is created without an ``lstat`` first. Every creation is exclusive (``O_EXCL``, ``mkdir``,
  ``mknod``, ``symlink``, ``link``): were the tree ever wrong, the entry would fail, never
  overwrite or follow anything.
* A new regular file is not chowned when it is already owned as its header says: uid and gid
  are the process's euid and egid, and the directory's gid too (a setgid directory or a
  ``grpid`` mount hands that down instead). A new file has no setuid bit or capability for a
  chown to drop.
* Plain headers (a common entry type, octal numbers, no PAX or GNU records) are decoded here,
  the same way tarfile does (checked against it); all others, and sparse members' data, by
  tarfile's own code.

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

Synchronous and blocking: callers run it in a worker thread. It never changes the umask, and
holds at most ``_DIR_CACHE`` (32) directory descriptors open besides its own few.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import stat
import struct
import tarfile
import zlib
from dataclasses import dataclass
from decimal import Decimal, DecimalException
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

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
_COPY_CHUNK: Final = 256 * 1024  # sparse members: one bounded buffer
_READ_CHUNK: Final = 256 * 1024  # what is asked of the caller's stream at a time
_BLOCK: Final = tarfile.BLOCKSIZE
# Open directory descriptors kept between entries. Entries of one directory come together in
# a tar, so a few suffice; the cap bounds what one unpack holds of the process's descriptors.
_DIR_CACHE: Final = 32
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Linux's dev_t as the kernel keeps it: 12-bit major, 20-bit minor.
_MAX_MAJOR: Final = (1 << 12) - 1
_MAX_MINOR: Final = (1 << 20) - 1
# (uid_t)-1 means "leave unchanged" to chown, so the largest usable id is one less.
_MAX_ID: Final = (1 << 32) - 2
_MAX_MTIME_NS: Final = (1 << 63) - 1
_MAX_MTIME_S: Final = Decimal(_MAX_MTIME_NS).scaleb(-9)
_MAX_MTIME_WHOLE_S: Final = _MAX_MTIME_NS // 10**9
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

# The header fields a plain header needs: name, the numbers (mode, uid, gid, size, mtime,
# chksum), type, linkname, (magic, version, uname, gname skipped), devmajor, devminor, prefix.
_HEADER: Final = struct.Struct("100s56sc100s8x64x8s8s155s12x")
_NUMBERS: Final = ((0, 8), (8, 16), (16, 24), (24, 36), (36, 48), (48, 56))
# How tar writers (GNU tar, Go, Python, busybox) spell those numbers when they fit.
_USUAL_NUMBERS: Final = re.compile(
    rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 "
)
_NO_DEVICE: Final = {b"\0" * 8: 0, b"0000000\0": 0}
# For tarfile's checksum (a byte sum) from adler32, whose sums are mod 65521: halves of bytes
# and low bits, whose sums over a block stay below that.
_HALF: Final = bytes(b >> 1 for b in range(256))
_LOW_BIT: Final = bytes(b & 1 for b in range(256))
# Entry types whose header alone describes the entry (no GNU or PAX extension records).
_PLAIN_TYPES: Final = frozenset(
    {
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
    }
)
# How TarFile.next tells the end of an archive from a damaged header (not in typeshed).
_EOF_HEADER: Final[type[Exception]] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_EMPTY_HEADER: Final[type[Exception]] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_BAD_HEADERS: Final[tuple[type[Exception], ...]] = (
    _EMPTY_HEADER,
    tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
    tarfile.InvalidHeaderError,  # type: ignore[attr-defined]
)

_Key = tuple[str, ...]  # a normalised path inside dest, one component per item; () is dest
# What this layer created under dest, as nested dicts: name -> the directory's own dict, or None
# for a non-directory. Dest starts empty, so a name that is not here does not exist.
_Tree = dict[str, Any]
# An open directory under dest: (descriptor, its gid, its _Tree node or None if not known).
_Dir = tuple[int, int, _Tree | None]


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

    Reads the stream once, front to back (only ``read`` is used; it may return fewer bytes than
    asked, and ``b""`` only at the end). ``allow_devices=False`` refuses character and block
    devices (whiteouts are always created); ``same_owner=False`` leaves everything owned by the
    calling process. Raises ``UnsafeLayer`` for a bad layer and ``OSError`` for a host failure;
    in both cases the caller must delete ``dest``.
    """
    root_fd = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        if os.listdir(root_fd):
            raise ValueError(f"unpack destination {str(dest)!r} is not empty")
        unpacker = _Unpacker(
            root_fd, os.path.abspath(dest), allow_devices=allow_devices, same_owner=same_owner
        )
        try:
            return unpacker.run(_Reader(tar_stream))
        finally:
            unpacker.close()
    finally:
        os.close(root_fd)


def _corrupt(e: Exception | str) -> UnsafeLayer:
    return UnsafeLayer(f"corrupt layer: {e}")


def _octal(field: bytes) -> int:
    """A numeric header field as tarfile's ``nti`` reads it, for the common spellings.

    Raises ValueError for anything else (base-256, stray bytes, blanks), which sends the header
    to tarfile: what this accepts, it decodes to the same number (``int`` of the same digits).
    """
    return int(field.partition(b"\0")[0] or b"0", 8)


def _nts(field: bytes) -> str:
    return field.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def _plain_header(buf: bytes, pos: int) -> tarfile.TarInfo | None:
    """The header block at ``buf[pos:pos + 512]`` decoded as tarfile would, or ``None``.

    Only plain headers are decoded here: a common entry type, numbers in octal, the unsigned
    checksum right, and nothing that tarfile treats specially (PAX and GNU extension headers,
    sparse entries, base-256 numbers, end-of-archive or damaged blocks). For those the result
    is what ``tarfile.TarInfo.frombuf`` and ``_proc_builtin`` make of the block, except that
    ``uname`` and ``gname`` are left empty (never used here). ``None`` hands the block to
    tarfile itself, which then decides (including whether it is an error).
    """
    name, numeric, kind, linkname, major, minor, prefix = _HEADER.unpack_from(buf, pos)
    if kind not in _PLAIN_TYPES:
        return None
    usual = _USUAL_NUMBERS.fullmatch(numeric)
    try:
        if usual is not None:
            mode, uid, gid, size, mtime, want = [int(g, 8) for g in usual.groups()]
        else:
            mode, uid, gid, size, mtime, want = [_octal(numeric[a:b]) for a, b in _NUMBERS]
            if min(mode, uid, gid, size, mtime) < 0:
                return None
        devmajor = _NO_DEVICE.get(major)
        if devmajor is None:
            devmajor = _octal(major)
        devminor = _NO_DEVICE.get(minor)
        if devminor is None:
            devminor = _octal(minor)
    except ValueError:
        return None
    if devmajor < 0 or devminor < 0:
        return None
    # tarfile's unsigned checksum: the sum of the bytes, the checksum field counting as spaces.
    block = buf[pos : pos + _BLOCK]
    halves = zlib.adler32(block.translate(_HALF)) - 1  # the low half, as < 65521
    low_bits = zlib.adler32(block.translate(_LOW_BIT)) - 1
    total = 2 * (halves & 0xFFFF) + (low_bits & 0xFFFF) - sum(block[148:156]) + 256
    if total != want:
        return None
    ti = tarfile.TarInfo()
    ti.mode, ti.uid, ti.gid, ti.size, ti.mtime = mode, uid, gid, size, mtime
    ti.devmajor, ti.devminor, ti.chksum = devmajor, devminor, want
    if linkname[0]:
        ti.linkname = _nts(linkname)
    path = _nts(name)
    if kind == tarfile.AREGTYPE and path.endswith("/"):  # old V7 directories
        kind = tarfile.DIRTYPE
    ti.type = kind
    if kind == tarfile.DIRTYPE:
        path = path.rstrip("/")
    head = _nts(prefix) if prefix[0] else ""
    if head:
        path = head + "/" + path
        if kind == tarfile.DIRTYPE:
            path = path.rstrip("/")
    ti.name = path
    return ti


class _Reader:
    """The layer tar, read front to back in chunks, one member at a time.

    Plain headers are decoded by ``_plain_header``; any other header (PAX and GNU extensions,
    sparse entries, global PAX records in force, odd encodings) by tarfile's own
    ``TarInfo.fromtarfile``, for which this object stands in for the ``TarFile``: it has the
    attributes that method uses (``fileobj`` with ``read``/``tell``/forward ``seek``, ``offset``,
    ``encoding``, ``errors``, ``pax_headers``). Where the stream ends, and which damaged headers
    end the archive rather than fail it, follows ``TarFile.next`` in stream mode.
    """

    encoding: Final = "utf-8"
    errors: Final = "surrogateescape"

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._buf = b""  # the current chunk of the stream
        self._pos = 0  # the read position in _buf
        self._base = 0  # the stream offset of _buf[0]
        self.fileobj = self
        self.offset = 0  # where the next member's header starts
        self.pax_headers: dict[str, str] = {}  # global PAX records (type "g")

    @property
    def count(self) -> int:
        """Bytes read from the stream so far."""
        return self._base + len(self._buf)

    def tell(self) -> int:
        return self._base + self._pos

    def _pull(self) -> bytes:
        try:
            return self._raw.read(_READ_CHUNK)
        except _TAR_ERRORS as e:
            raise _corrupt(e) from e

    def _next_chunk(self) -> bool:
        """Replace the (consumed) buffer by the next chunk; False at the end of the stream."""
        self._base += len(self._buf)
        self._buf, self._pos = b"", 0
        data = self._pull()
        if not data:
            return False
        self._buf = data
        return True

    def _ensure(self, n: int) -> bool:
        """Have ``n`` unread bytes in the buffer; False if the stream ends first."""
        while len(self._buf) - self._pos < n:
            data = self._pull()
            if not data:
                return False
            rest = self._buf[self._pos :]
            self._base += self._pos
            self._buf, self._pos = (rest + data if rest else data), 0
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream); for tarfile."""
        if n < 0:
            raise ValueError("read() needs a size")
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        while have < n and self._next_chunk():
            take = min(n - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        return b"".join(parts)

    def seek(self, pos: int) -> int:
        """Forward only, as for tarfile's stream mode (sparse members seek over their holes)."""
        here = self.tell()
        if pos < here:
            raise tarfile.StreamError("seeking backwards is not allowed")
        self.skip(pos - here)
        return self.tell()

    def skip(self, n: int) -> bool:
        """Pass over ``n`` bytes; False if the stream ends first."""
        while n > len(self._buf) - self._pos:
            n -= len(self._buf) - self._pos
            if not self._next_chunk():
                return False
        self._pos += n
        return True

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next ``n`` bytes of the stream to ``fd`` (at its file position)."""
        while n > 0:
            buf, pos = self._buf, self._pos
            avail = len(buf) - pos
            if not avail:
                if not self._next_chunk():
                    raise _corrupt("unexpected end of data")
                continue
            k = avail if avail < n else n
            view = memoryview(buf)[pos : pos + k]
            done = os.write(fd, view)
            while done < k:
                done += os.write(fd, view[done:])
            self._pos = pos + k
            n -= k

    def next(self) -> tarfile.TarInfo | None:
        """The next member, ``None`` at the end of the archive; ``UnsafeLayer`` if corrupt.

        Afterwards the stream is at the member's data (``offset_data``), and ``offset`` is
        where the next header starts.
        """
        here = self.tell()
        if self.offset != here:  # skip what is left of the previous member's data and padding
            if self.offset < here:
                raise _corrupt("seeking backwards is not allowed")
            if not self.skip(self.offset - here):
                raise _corrupt("unexpected end of data")
        start = self.offset
        if not self.pax_headers and self._ensure(_BLOCK):
            ti = _plain_header(self._buf, self._pos)
            if ti is not None:
                self._pos += _BLOCK
                ti.offset = start
                ti.offset_data = data = start + _BLOCK
                if ti.type in _REGULAR:
                    data += -(-ti.size // _BLOCK) * _BLOCK
                self.offset = data
                return ti
        try:
            return tarfile.TarInfo.fromtarfile(cast(tarfile.TarFile, self))
        except _EOF_HEADER:
            return None
        except _BAD_HEADERS as e:
            # As TarFile.next: a bad first header is an error (an empty stream an empty
            # layer), a bad later one the end of the archive.
            if start != 0:
                return None
            if isinstance(e, _EMPTY_HEADER) and self.count == 0:
                return None
            raise _corrupt(e) from e
        except _TAR_ERRORS as e:
            raise _corrupt(e) from e


def _split(name: str, *, entry: str, what: str = "name") -> _Key:
    """Normalise a tar name into components; refuse absolute names, ``..`` and NUL."""
    if "\0" in name:
        raise UnsafeLayer(f"entry {entry!r}: {what} contains a NUL byte", entry=entry)
    if name.startswith("/"):
        raise UnsafeLayer(f"entry {entry!r}: absolute {what} {name!r}", entry=entry)
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"entry {entry!r}: {what} {name!r} has a '..' component", entry=entry)
    return tuple(parts)


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    """The entry's mtime in ns: exact from a PAX record, else the header's seconds.

    tarfile parses PAX times as floats (about 0.2 µs resolution today), so the record is read
    here. Times before the epoch or past what a 64-bit timespec in ns holds become the epoch.
    """
    raw = ti.pax_headers.get("mtime") if ti.pax_headers else None
    if raw is None:
        whole = ti.mtime
        if type(whole) is int and 0 <= whole <= _MAX_MTIME_WHOLE_S:
            return whole * 10**9
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
        # Everything created under dest so far (dest started empty): a name missing here needs
        # no lstat before it is created (creation is exclusive anyway: O_EXCL, mkdir, mknod...).
        self.tree: _Tree = {}
        # Open descriptors of directories under dest, by path, least recently used first. Each
        # was reached from dest one component at a time with O_NOFOLLOW | O_DIRECTORY (or made
        # by mkdir there); `removed` closes those at or below a name before it is reused.
        self.open_dirs: dict[_Key, _Dir] = {}
        self.root_dir: _Dir = (root_fd, os.fstat(root_fd).st_gid, self.tree)
        # Who owns what we create: a new file's owner is (euid, egid), or the directory's gid
        # (setgid directory, grpid mount), so no chown is needed when all of them agree.
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.entries = self.regular_files = self.dirs = self.symlinks = self.hardlinks = 0
        self.devices = self.fifos = self.whiteouts = self.opaque_dirs = 0
        self.bytes = self.inodes = 0
        self.buf = memoryview(bytearray(_COPY_CHUNK))

    # -- driver -------------------------------------------------------------------------------

    def run(self, reader: _Reader) -> UnpackStats:
        while True:
            ti = reader.next()
            if ti is None:
                break
            self.entries += 1
            try:
                self.entry(reader, ti)
            except OSError as e:
                if e.errno not in _LAYER_ERRNOS:
                    raise
                raise UnsafeLayer(f"entry {ti.name!r}: {e.strerror or e}", entry=ti.name) from e
        self.finish()
        return self.stats()

    def close(self) -> None:
        dirs = list(self.open_dirs.values())
        self.open_dirs.clear()
        for fd, _, _ in dirs:
            os.close(fd)

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
            os.utime(fd, ns=(ns, ns))

    # -- one entry ----------------------------------------------------------------------------

    def entry(self, reader: _Reader, ti: tarfile.TarInfo) -> None:
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
        if kind in _REGULAR:
            self.regular(reader, ti, key)
        elif kind == tarfile.DIRTYPE:
            self.directory(ti, key)
        elif kind == tarfile.SYMTYPE:
            self.symlink(ti, key)
        elif kind == tarfile.LNKTYPE:
            self.hardlink(ti, key)
        else:
            self.special(ti, key)

    def regular(self, reader: _Reader, ti: tarfile.TarInfo, key: _Key) -> None:
        if ti.size < 0:
            raise _corrupt(f"entry {ti.name!r}: negative size")
        parent = self.walk(key[:-1], entry=ti.name, create=True)
        pfd, pgid, _ = parent
        self.clear(parent, key, for_dir=False)
        fd = os.open(key[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            self.added(parent, key, is_dir=False)
            self.inodes += 1
            self.linkable.add(key)
            if ti.sparse is None:
                if reader.tell() != ti.offset_data:
                    raise _corrupt(f"entry {ti.name!r}: data not where the header says")
                reader.copy_to(fd, ti.size)
            else:
                self.copy_sparse(reader, ti, fd)
            # A new file has no setuid bit or capability for chown to drop, and is already
            # owned right when (uid, gid) are ours and its directory's gid is ours too.
            owned = ti.uid == self.euid and ti.gid == self.egid == pgid
            self.apply_meta_fd(fd, ti, stat.S_IFREG, chown=not owned)
            ns = _mtime_ns(ti)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.regular_files += 1
        self.bytes += ti.size

    def copy_sparse(self, reader: _Reader, ti: tarfile.TarInfo, fd: int) -> None:
        """Copy a sparse member (GNU and PAX sparse formats) region by region, holes left as
        holes: a few bytes of header can declare terabytes of zeros.

        tarfile's own member reader maps the regions onto the stream, as for ``extractfile``.
        """
        try:
            src = tarfile.TarFile.fileobject(cast(tarfile.TarFile, reader), ti)
        except _TAR_ERRORS as e:
            raise _corrupt(e) from e
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
            parent = self.walk(key[:-1], entry=ti.name, create=True)
            pfd = parent[0]
            existing = self.clear(parent, key, for_dir=True)
            if existing is None:
                os.mkdir(key[-1], 0o700, dir_fd=pfd)
                self.added(parent, key, is_dir=True)
                self.inodes += 1
            fd = os.open(key[-1], _DIR_FLAGS, dir_fd=pfd)
            try:
                if existing is None:
                    self.made_dir(fd, key)
                self.apply_meta_fd(fd, ti, stat.S_IFDIR)
            except BaseException:
                os.close(fd)
                raise
            self.remember(key, fd)  # its files are likely next
        else:
            self.apply_meta_fd(self.root_fd, ti, stat.S_IFDIR)
            self.root_dir = (self.root_fd, os.fstat(self.root_fd).st_gid, self.tree)
        self.dir_mtimes.append((key, _mtime_ns(ti)))
        self.dirs += 1

    def symlink(self, ti: tarfile.TarInfo, key: _Key) -> None:
        target = ti.linkname
        if not target or "\0" in target:
            raise UnsafeLayer(f"entry {ti.name!r}: invalid symbolic link target", entry=ti.name)
        parent = self.walk(key[:-1], entry=ti.name, create=True)
        pfd = parent[0]
        self.clear(parent, key, for_dir=False)
        os.symlink(target, key[-1], dir_fd=pfd)  # verbatim; resolved in the container
        self.added(parent, key, is_dir=False)
        self.inodes += 1
        self.linkable.add(key)
        self.apply_meta_at(pfd, key, ti, is_symlink=True)
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
        parent = self.walk(key[:-1], entry=name, create=True)
        # Our own descriptor: resolving the target below may evict the parent's from the cache.
        pfd = os.dup(parent[0])
        parent = (pfd, parent[1], parent[2])
        try:
            # Remove first: the target may be below the name being replaced (then it is gone).
            self.clear(parent, key, for_dir=False)
            tfd = self.open_dir(target[:-1], entry=name, create=False, what="hard link target")
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
            self.added(parent, key, is_dir=False)
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
        parent = self.walk(key[:-1], entry=name, create=True)
        pfd = parent[0]
        self.clear(parent, key, for_dir=False)
        os.mknod(key[-1], fmt | 0o600, dev, dir_fd=pfd)
        self.added(parent, key, is_dir=False)
        self.inodes += 1
        self.linkable.add(key)
        self.apply_meta_at(pfd, key, ti, is_symlink=False)
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
        pdir = self.walk(parent, entry=ti.name, create=True)
        pfd = pdir[0]
        st = self.lstat(pfd, hidden)
        if st is None:
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
            self.added(pdir, key, is_dir=False)
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
        self.whited_out.add(key)
        self.whiteouts += 1

    def opaque(self, ti: tarfile.TarInfo, key: _Key) -> None:
        fd = self.open_dir(key, entry=ti.name, create=True)
        os.setxattr(fd, OPAQUE_XATTR, b"y")
        self.opaque_dirs += 1

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def clear(self, parent: _Dir, key: _Key, *, for_dir: bool) -> os.stat_result | None:
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

    def node(self, key: _Key) -> _Tree | None:
        """The tree of what this layer made in directory ``key``, if ``key`` is one."""
        node: _Tree | None = self.tree
        for comp in key:
            node = node.get(comp)  # type: ignore[union-attr]
            if node is None:
                return None
        return node

    @staticmethod
    def added(parent: _Dir, key: _Key, *, is_dir: bool) -> None:
        """``key`` was just created in ``parent``."""
        node = parent[2]
        if node is not None:
            node[key[-1]] = {} if is_dir else None

    def removed(self, key: _Key) -> None:
        """``key`` is about to be removed: forget it, what is below it, and their descriptors.

        Called before the removal, so that even a failed removal leaves no stale entry.
        """
        node = self.node(key[:-1])
        if node is not None:
            node.pop(key[-1], None)
        n = len(key)
        for k in [k for k in self.open_dirs if k[:n] == key]:
            os.close(self.open_dirs.pop(k)[0])

    def made_dir(self, fd: int, key: _Key) -> None:
        """A directory this layer just created: opaque where this layer whited the name out."""
        if key in self.whited_out:
            os.setxattr(fd, OPAQUE_XATTR, b"y")

    def remember(self, key: _Key, fd: int) -> _Dir:
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

    def open_dir(self, key: _Key, *, entry: str, create: bool, what: str = "parent") -> int:
        """The descriptor of ``walk``: the same rules apply."""
        return self.walk(key, entry=entry, create=create, what=what)[0]

    def walk(self, key: _Key, *, entry: str, create: bool, what: str = "parent") -> _Dir:
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

    def open_child(self, fd: int, sub: _Key, *, entry: str, create: bool, what: str) -> int:
        """Open directory ``sub[-1]`` in ``fd`` (directory ``sub[:-1]``) with O_NOFOLLOW."""
        comp = sub[-1]
        try:
            return os.open(comp, _DIR_FLAGS, dir_fd=fd)
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

    def make_parent(self, dir_fd: int, key: _Key) -> int:
        os.mkdir(key[-1], 0o755, dir_fd=dir_fd)
        node = self.node(key[:-1])
        if node is not None:
            node[key[-1]] = {}
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

    def apply_meta_fd(self, fd: int, ti: tarfile.TarInfo, fmt: int, *, chown: bool = True) -> None:
        """Owner, xattrs and mode of a regular file or directory (``fmt``), through its fd."""
        if self.same_owner and chown:
            os.fchown(fd, ti.uid, ti.gid)
        if ti.pax_headers:
            self.set_xattrs(fd, ti, fmt)
        os.fchmod(fd, ti.mode & 0o7777)

    def apply_meta_at(self, pfd: int, key: _Key, ti: tarfile.TarInfo, *, is_symlink: bool) -> None:
        """Owner, xattrs, mode (not on symlinks) and mtime of a node that cannot be opened."""
        base = key[-1]
        if self.same_owner:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        if ti.pax_headers and _xattrs(ti, ti.name):
            # setxattr has no dir_fd form: walk the parents again, uncached and without
            # following links, right before the kernel resolves the path.
            self.check_parents(key, entry=ti.name)
            mode = stat.S_IFLNK if is_symlink else stat.S_IFCHR
            self.set_xattrs(os.path.join(self.root, *key), ti, mode)
        if not is_symlink:
            os.chmod(base, ti.mode & 0o7777, dir_fd=pfd)  # the node we just made, not a link
        ns = _mtime_ns(ti)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def check_parents(self, key: _Key, *, entry: str) -> None:
        """Walk to ``key``'s parent from dest, one component at a time, without the cache."""
        fd = os.dup(self.root_fd)
        try:
            for i in range(1, len(key)):
                nfd = self.open_child(fd, key[:i], entry=entry, create=False, what="parent")
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)
