"""Reading a layer tar stream front to back: headers, names, mtimes and xattr records.

Pure parsing, no file system: ``TarReader`` takes any object with ``read`` (the decompressed
layer) and hands out one member at a time, then that member's data as views of its buffer;
what to do with them is the unpacker's business (``registry.unpack``).

Plain headers (a common entry type, octal numbers, no PAX or GNU records) are decoded here,
the same way tarfile does (a property test checks it against tarfile); every other header,
and sparse members' data maps, by tarfile's own code. Where the stream ends, and which
damaged headers end the archive rather than fail it, follows ``TarFile.next`` in stream mode.

Names are split into components with absolute names, ``..`` components and NUL bytes
refused; times are read exactly from PAX records. A malformed stream raises ``UnsafeLayer``
("corrupt layer: ..."), never tarfile's or struct's own exceptions.
"""

from __future__ import annotations

import logging
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator
from decimal import Decimal, DecimalException
from typing import BinaryIO, Final, cast

__all__ = [
    "REGULAR_TYPES",
    "TAR_ERRORS",
    "Key",
    "TarReader",
    "UnsafeLayer",
    "corrupt",
    "mtime_ns",
    "pax_xattrs",
    "plain_header",
    "split_name",
]

log = logging.getLogger("cri_async.registry.unpack")

Key = tuple[str, ...]  # a normalised path inside the layer, one component per item; () is its root

_XATTR_PAX_PREFIX: Final = "SCHILY.xattr."
_READ_CHUNK: Final = 256 * 1024  # what is asked of the caller's stream at a time
_BLOCK: Final = tarfile.BLOCKSIZE
_MAX_MTIME_NS: Final = (1 << 63) - 1
_MAX_MTIME_S: Final = Decimal(_MAX_MTIME_NS).scaleb(-9)
_MAX_MTIME_WHOLE_S: Final = _MAX_MTIME_NS // 10**9

# What tarfile raises on a malformed stream besides TarError (header parsing is not airtight).
TAR_ERRORS: Final = (tarfile.TarError, EOFError, ValueError, OverflowError)
REGULAR_TYPES: Final = frozenset(tarfile.REGULAR_TYPES)  # includes CONTTYPE and GNU sparse
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


class UnsafeLayer(ValueError):
    """The layer is hostile, corrupt or unsupported; the message names the entry and why.

    ``entry`` is the entry's name as found in the tar (``None`` for stream-level problems).
    """

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


def corrupt(e: Exception | str) -> UnsafeLayer:
    return UnsafeLayer(f"corrupt layer: {e}")


def _octal(field: bytes) -> int:
    """A numeric header field as tarfile's ``nti`` reads it, for the common spellings.

    Raises ValueError for anything else (base-256, stray bytes, blanks), which sends the header
    to tarfile: what this accepts, it decodes to the same number (``int`` of the same digits).
    """
    return int(field.partition(b"\0")[0] or b"0", 8)


def _nts(field: bytes) -> str:
    return field.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def plain_header(buf: bytes, pos: int) -> tarfile.TarInfo | None:
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


class TarReader:
    """The layer tar, read front to back in chunks, one member at a time.

    Plain headers are decoded by ``plain_header``; any other header (PAX and GNU extensions,
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
        except TAR_ERRORS as e:
            raise corrupt(e) from e

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

    def data(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes of the stream, as views of the reader's buffer in order.

        A view is valid until the next call on the reader; ``UnsafeLayer`` if the stream ends
        first.
        """
        while n > 0:
            buf, pos = self._buf, self._pos
            avail = len(buf) - pos
            if not avail:
                if not self._next_chunk():
                    raise corrupt("unexpected end of data")
                continue
            k = avail if avail < n else n
            self._pos = pos + k
            n -= k
            yield memoryview(buf)[pos : pos + k]

    def next(self) -> tarfile.TarInfo | None:
        """The next member, ``None`` at the end of the archive; ``UnsafeLayer`` if corrupt.

        Afterwards the stream is at the member's data (``offset_data``), and ``offset`` is
        where the next header starts.
        """
        here = self.tell()
        if self.offset != here:  # skip what is left of the previous member's data and padding
            if self.offset < here:
                raise corrupt("seeking backwards is not allowed")
            if not self.skip(self.offset - here):
                raise corrupt("unexpected end of data")
        start = self.offset
        if not self.pax_headers and self._ensure(_BLOCK):
            ti = plain_header(self._buf, self._pos)
            if ti is not None:
                self._pos += _BLOCK
                ti.offset = start
                ti.offset_data = data = start + _BLOCK
                if ti.type in REGULAR_TYPES:
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
            raise corrupt(e) from e
        except TAR_ERRORS as e:
            raise corrupt(e) from e


def split_name(name: str, *, entry: str, what: str = "name") -> Key:
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


def mtime_ns(ti: tarfile.TarInfo) -> int:
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


def pax_xattrs(ti: tarfile.TarInfo, entry: str) -> list[tuple[str, bytes]]:
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
