"""Layer tars for the registry tests: member builders, and what a tree on disk holds."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cri_async import linux
from tests.support.prereq import need_root as _need_root
from tests.support.prereq import unavailable

MTIME = 1_700_000_000

Member = tuple[tarfile.TarInfo, bytes | None]


def need_root() -> None:
    _need_root("mknod, chown, trusted.* xattrs")


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int | None = None,
    uid: int = 0,
    gid: int = 0,
    mtime: int | float = MTIME,
    linkname: str = "",
    dev: tuple[int, int] = (0, 0),
    xattrs: dict[str, bytes] | None = None,
    pax: dict[str, str] | None = None,
) -> Member:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    ti.uid, ti.gid = uid, gid
    ti.mtime = mtime
    ti.linkname = linkname
    ti.devmajor, ti.devminor = dev
    headers = {
        "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in (xattrs or {}).items()
    }
    headers.update(pax or {})
    ti.pax_headers = headers
    if kind in tarfile.REGULAR_TYPES:
        ti.size = len(data)
        return ti, data
    return ti, None


def d(name: str, **kw: Any) -> Member:
    return entry(name, tarfile.DIRTYPE, **kw)


def f(name: str, data: bytes = b"", **kw: Any) -> Member:
    return entry(name, data=data, **kw)


def sym(name: str, target: str, **kw: Any) -> Member:
    return entry(name, tarfile.SYMTYPE, linkname=target, **kw)


def hard(name: str, target: str, **kw: Any) -> Member:
    return entry(name, tarfile.LNKTYPE, linkname=target, **kw)


def make_tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def describe(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]
        ):
            p = Path(dirpath) / name
            s = os.lstat(p)
            info: tuple[Any, ...] = (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns)
            if stat.S_ISREG(s.st_mode):
                info += (p.read_bytes(),)
            elif stat.S_ISLNK(s.st_mode):
                info += (os.readlink(p),)
            out[os.path.normpath(os.path.relpath(p, root))] = info
    return out


@contextlib.contextmanager
def overlay_view(lowers: list[Path], mnt: Path) -> Iterator[Path]:
    """A read-only overlayfs of ``lowers`` (top-most first) at ``mnt``, through the new mount
    API (one ``lowerdir+`` per layer, no option-string limit)."""
    if "overlay" not in Path("/proc/filesystems").read_text():
        unavailable("overlayfs is not available in this kernel")
    mnt.mkdir(exist_ok=True)
    try:
        linux.mount_new_api("overlay", str(mnt), [("lowerdir+", str(p)) for p in lowers])
    except OSError as e:
        unavailable(f"cannot mount overlayfs: {e}")
    try:
        yield mnt
    finally:
        linux.umount(str(mnt))


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def gzip_bomb(zeros: int, name: str = "zeros") -> tuple[bytes, str]:
    """A gzip layer holding one file of ``zeros`` zero bytes, made without holding it in
    memory (1 GiB becomes about 1 MiB): (the blob, the layer's diff id)."""
    import hashlib

    ti = tarfile.TarInfo(name)
    ti.size = zeros
    out = io.BytesIO()
    diff = hashlib.sha256()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as z:

        def put(data: bytes) -> None:
            z.write(data)
            diff.update(data)

        put(ti.tobuf(tarfile.PAX_FORMAT))
        chunk = bytes(1 << 20)
        left = zeros
        while left:
            put(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        put(bytes(-zeros % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE))
    return out.getvalue(), "sha256:" + diff.hexdigest()


def mixed_layer() -> bytes:
    return make_tar(
        d("etc", mode=0o750, mtime=111),
        f("etc/passwd", b"root:x:0:0\n" * 50, uid=1000),
        f("é/日本/long-" + "n" * 150, b"pax name", xattrs={"user.x": b"\xff"}),
        f("big", bytes(range(256)) * 2000),  # crosses the reader's chunks
        sym("etc/l", "passwd"),
        hard("etc/h", "etc/passwd"),
        entry("fifo", tarfile.FIFOTYPE, mode=0o600),
        *(f(f"many/f{i}", os.urandom(i * 37 % 1500)) for i in range(300)),
        f("empty"),
        f("mtime", b"m", mtime=1.5),
    )


MIXED_LAYER = mixed_layer()
