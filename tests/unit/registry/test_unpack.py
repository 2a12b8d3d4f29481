"""unpack_layer: entry types, metadata, whiteouts on a real overlayfs, and hostile layers.

These tests need root (mknod, chown, trusted.* xattrs). Without it they skip, except under
``CI=true`` where a missing privilege or overlayfs is a failure, not a reason to skip.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cri_async.registry.unpack import (
    OPAQUE_XATTR,
    UnpackStats,
    UnsafeLayer,
    unpack_layer,
)
from tests.support.prereq import unavailable
from tests.unit.registry.layers import (
    MIXED_LAYER,
    MTIME,
    Member,
    d,
    describe,
    entry,
    f,
    hard,
    listing,
    make_tar,
    need_root,
    overlay_view,
    sym,
    xattr,
)

OLD = 1_000_000_000  # ns: what the outside fixtures are aged to
# struct vfs_cap_data, revision 2, CAP_NET_BIND_SERVICE permitted+effective: has non-UTF-8 bytes.
CAP_NET_BIND_SERVICE = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    need_root()


def unpack(data: bytes, dest: Path, **kw: Any) -> UnpackStats:
    return unpack_layer(io.BytesIO(data), dest, **kw)


# -- the outside world, watched -----------------------------------------------------------------


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[Any, ...]]:
    """Everything observable under ``root`` except ``exclude`` (ctime catches any metadata
    change, nlink a hard link made to a file, the root's mtime an entry created next to it)."""
    out: dict[str, tuple[Any, ...]] = {}

    def rec(p: Path) -> None:
        s = os.lstat(p)
        names = sorted(os.listxattr(p, follow_symlinks=False))
        info: tuple[Any, ...] = (
            s.st_mode,
            s.st_uid,
            s.st_gid,
            s.st_size,
            s.st_nlink,
            s.st_mtime_ns,
            s.st_ctime_ns,
            tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names),
        )
        if stat.S_ISREG(s.st_mode):
            info += (p.read_bytes(),)
        elif stat.S_ISLNK(s.st_mode):
            info += (os.readlink(p),)
        out[str(p.relative_to(root))] = info
        if stat.S_ISDIR(s.st_mode):
            for c in sorted(os.listdir(p)):
                if p / c != exclude:
                    rec(p / c)

    rec(root)
    return out


@dataclass
class Env:
    root: Path
    dest: Path
    outside: Path  # a stand-in for /etc and friends

    def watch(self) -> dict[str, tuple[Any, ...]]:
        return snapshot(self.root, self.dest)


def make_env(root: Path) -> Env:
    dest = root / "dest"
    outside = root / "outside"
    dest.mkdir()
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (outside / "outside_file").write_text("secret")
    (root / "sentinel").mkdir()
    (root / "sentinel" / "keep").write_text("keep")
    for p in (outside / "etc" / "passwd", outside / "etc", outside / "outside_file", outside):
        os.utime(p, ns=(OLD, OLD))
    return Env(root, dest, outside)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    before = e.watch()
    yield e
    assert e.watch() == before, "something outside dest changed"


# -- entry types and metadata -------------------------------------------------------------------


def test_regular_file_contents_mode_owner_and_ns_mtime(env: Env) -> None:
    layer = make_tar(
        f(
            "bin/su",
            b"#!/bin/sh\n",
            mode=0o4755,
            uid=1000,
            gid=1001,
            mtime=MTIME,
            pax={"mtime": f"{MTIME}.123456789"},
        ),
        f("sgid", b"x", mode=0o2711),
        f("sticky", b"", mode=0o1600),
    )
    unpack(layer, env.dest)
    s = os.lstat(env.dest / "bin/su")
    assert (env.dest / "bin/su").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_ISREG(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o4755
    assert (s.st_uid, s.st_gid) == (1000, 1001)
    assert s.st_mtime_ns == MTIME * 10**9 + 123456789
    assert stat.S_IMODE(os.lstat(env.dest / "sgid").st_mode) == 0o2711
    assert stat.S_IMODE(os.lstat(env.dest / "sticky").st_mode) == 0o1600


def test_large_file_streamed_in_chunks(env: Env) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    stats = unpack(make_tar(f("big", data)), env.dest)
    assert (env.dest / "big").read_bytes() == data
    assert stats.bytes == len(data)


def test_ustar_and_gnu_formats(env: Env) -> None:
    long = "x" * 120 + "/" + "y" * 90  # needs the ustar prefix field or a GNU long name
    for fmt, sub, target in (
        (tarfile.USTAR_FORMAT, "u", "/x" * 40),
        (tarfile.GNU_FORMAT, "g", "/x" * 100),  # GNU long link
    ):
        dest = env.dest / sub  # unpack into fresh subdirectories of dest
        dest.mkdir()
        unpack(make_tar(f(long, b"long"), sym("l", target), fmt=fmt), dest)
        assert (dest / long).read_bytes() == b"long"
        assert os.readlink(dest / "l") == target


def test_directory_metadata_and_mtime_set_after_children(env: Env) -> None:
    layer = make_tar(
        d("etc", mode=0o750, uid=1000, gid=1000, mtime=12345),
        f("etc/a", b"a"),
        d("etc/sub", mode=0o700, mtime=23456, pax={"mtime": "23456.5"}),
        f("etc/sub/b", b"b"),
        sym("etc/link", "a"),
        entry("etc/fifo", tarfile.FIFOTYPE),
    )
    unpack(layer, env.dest)
    s = os.lstat(env.dest / "etc")
    assert stat.S_IMODE(s.st_mode) == 0o750 and (s.st_uid, s.st_gid) == (1000, 1000)
    assert s.st_mtime_ns == 12345 * 10**9
    sub = os.lstat(env.dest / "etc/sub")
    assert stat.S_IMODE(sub.st_mode) == 0o700 and sub.st_mtime_ns == 23456_500_000_000


def test_xattrs_applied_and_capabilities_survive_chown(env: Env, caplog: Any) -> None:
    layer = make_tar(
        f(
            "usr/bin/ping",
            b"ELF",
            mode=0o4755,
            uid=1000,
            xattrs={"security.capability": CAP_NET_BIND_SERVICE, "user.foo": b"bar"},
        ),
        d("data", xattrs={"user.dir": b"\x00\xff"}),
        sym("lnk", "/nowhere", xattrs={"user.foo": b"refused on symlinks"}),
        f("sneaky", b"", xattrs={"trusted.overlay.opaque": b"y", "trusted.x": b"1"}),
    )
    unpack(layer, env.dest)
    ping = env.dest / "usr/bin/ping"
    assert xattr(ping, "security.capability") == CAP_NET_BIND_SERVICE
    assert xattr(ping, "user.foo") == b"bar"
    assert stat.S_IMODE(os.lstat(ping).st_mode) == 0o4755
    assert xattr(env.dest / "data", "user.dir") == b"\x00\xff"
    assert xattr(env.dest / "lnk", "user.foo") is None  # kernel says EPERM: skipped
    assert xattr(env.dest / "sneaky", "trusted.overlay.opaque") is None  # host namespace
    assert xattr(env.dest / "sneaky", "trusted.x") is None
    assert "trusted.overlay.opaque" in caplog.text and "user.foo" in caplog.text


def test_symlinks_stored_verbatim_and_never_followed(env: Env) -> None:
    target = str(env.outside / "outside_file")
    layer = make_tar(
        sym("etc/localtime", "/usr/share/zoneinfo/UTC", uid=1000, gid=1000, mtime=4242),
        sym("out", target, uid=1000, mode=0o777),
        sym("rel", "../../outside/outside_file"),
        sym("dangling", "nope/../../x"),
    )
    stats = unpack(layer, env.dest)
    lt = os.lstat(env.dest / "etc/localtime")
    assert stat.S_ISLNK(lt.st_mode) and os.readlink(env.dest / "etc/localtime").endswith("UTC")
    assert (lt.st_uid, lt.st_gid) == (1000, 1000) and lt.st_mtime_ns == 4242 * 10**9
    assert os.readlink(env.dest / "out") == target
    assert os.readlink(env.dest / "rel") == "../../outside/outside_file"
    assert os.readlink(env.dest / "dangling") == "nope/../../x"
    assert stats.symlinks == 4


def test_hard_links(env: Env) -> None:
    layer = make_tar(
        f(
            "a",
            b"content",
            mode=0o4750,
            uid=1000,
            xattrs={"security.capability": CAP_NET_BIND_SERVICE},
        ),
        hard("b", "a", mode=0o644, uid=0),  # a bare link header: it must not re-chown a
        hard("sub/c", "./a"),
        sym("s", str(Path("/outside") / "x")),
        hard("s2", "s"),
    )
    stats = unpack(layer, env.dest)
    a, b, c = (os.lstat(env.dest / n) for n in ("a", "b", "sub/c"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert stat.S_IMODE(a.st_mode) == 0o4750 and a.st_uid == 1000
    assert xattr(env.dest / "a", "security.capability") == CAP_NET_BIND_SERVICE
    s, s2 = os.lstat(env.dest / "s"), os.lstat(env.dest / "s2")
    assert stat.S_ISLNK(s2.st_mode) and s.st_ino == s2.st_ino  # the link itself, not its target
    assert stats.hardlinks == 3 and stats.inodes == 3  # a, the missing parent sub, s


def test_later_regular_entry_does_not_write_through_a_hard_link(env: Env) -> None:
    unpack(make_tar(f("a", b"old"), hard("b", "a"), f("a", b"new")), env.dest)
    assert (env.dest / "a").read_bytes() == b"new"
    assert (env.dest / "b").read_bytes() == b"old"


def test_fifo_and_devices(env: Env) -> None:
    layer = make_tar(
        entry("dev/fifo", tarfile.FIFOTYPE, mode=0o640, uid=1000),
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3), mtime=777),
        entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0)),
        entry("dev/big", tarfile.CHRTYPE, mode=0o600, dev=(4095, (1 << 20) - 1)),
        entry("dev/suid", tarfile.CHRTYPE, mode=0o4600, dev=(1, 5)),
    )
    stats = unpack(layer, env.dest)
    fifo = os.lstat(env.dest / "dev/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640
    assert fifo.st_uid == 1000
    null = os.lstat(env.dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert null.st_mtime_ns == 777 * 10**9
    loop = os.lstat(env.dest / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6
    assert (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    big = os.lstat(env.dest / "dev/big")
    assert (os.major(big.st_rdev), os.minor(big.st_rdev)) == (4095, (1 << 20) - 1)
    assert stat.S_IMODE(os.lstat(env.dest / "dev/suid").st_mode) == 0o4600
    assert (stats.devices, stats.fifos) == (4, 1)


def test_devices_refused_unless_allowed_fifos_always_fine(env: Env) -> None:
    unpack(make_tar(entry("p", tarfile.FIFOTYPE)), env.dest, allow_devices=False)
    assert stat.S_ISFIFO(os.lstat(env.dest / "p").st_mode)
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        dest = env.dest / kind.decode()
        dest.mkdir()
        with pytest.raises(UnsafeLayer, match=r"'dev/sda'.*not allowed"):
            unpack(make_tar(entry("dev/sda", kind, dev=(8, 0))), dest, allow_devices=False)
        assert listing(dest) == []


@pytest.mark.parametrize("dev", [(4096, 0), (0, 1 << 20), (1 << 32, 0)])
def test_device_numbers_linux_cannot_hold_are_refused(env: Env, dev: tuple[int, int]) -> None:
    with pytest.raises(UnsafeLayer, match="out of range"):
        # GNU format: base-256 numbers, for a major beyond what octal fields hold
        unpack(make_tar(entry("c", tarfile.CHRTYPE, dev=dev), fmt=tarfile.GNU_FORMAT), env.dest)


def test_duplicate_entries_later_wins(env: Env) -> None:
    layer = make_tar(
        f("file", b"one", mode=0o600),
        f("file", b"two", mode=0o640),
        f("was_file", b"x"),
        d("was_file", mode=0o711),
        d("was_dir"),
        f("was_dir/child", b"c"),
        d("was_dir/grand"),
        f("was_dir", b"now a file"),
        d("merged", mode=0o700, uid=1000),
        f("merged/keep", b"k"),
        d("merged", mode=0o755, uid=0),
        f("was_link", b""),
        sym("was_link", "file"),
        sym("link", "a"),
        sym("link", "b"),
    )
    stats = unpack(layer, env.dest)
    assert (env.dest / "file").read_bytes() == b"two"
    assert stat.S_IMODE(os.lstat(env.dest / "file").st_mode) == 0o640
    assert (env.dest / "was_file").is_dir()
    assert stat.S_IMODE(os.lstat(env.dest / "was_file").st_mode) == 0o711
    assert (env.dest / "was_dir").read_bytes() == b"now a file"
    m = os.lstat(env.dest / "merged")
    assert (env.dest / "merged/keep").read_bytes() == b"k"
    assert stat.S_IMODE(m.st_mode) == 0o755 and m.st_uid == 0
    assert os.readlink(env.dest / "was_link") == "file"
    assert os.readlink(env.dest / "link") == "b"
    assert stats.entries == 15


def test_entry_replacing_a_symlink_to_outside_does_not_follow_it(env: Env) -> None:
    out = env.outside
    layer = make_tar(
        sym("f", str(out / "outside_file")),
        f("f", b"mine", mode=0o777, uid=1000),
        sym("dir", str(out / "etc")),
        d("dir", mode=0o777, uid=1000, xattrs={"user.x": b"1"}),
        f("dir/passwd", b"mine"),
        d("gone", mtime=1),  # its mtime is applied at the end, to whatever is there then
        sym("gone", str(out / "etc")),
        sym("h", str(out / "outside_file")),
        hard("h2", "h"),
        f("h2", b"replaced"),
    )
    unpack(layer, env.dest)
    assert (env.dest / "f").read_bytes() == b"mine"
    assert (env.dest / "dir/passwd").read_bytes() == b"mine"
    assert os.readlink(env.dest / "gone") == str(out / "etc")
    # the `env` fixture checks that nothing under outside/ changed


def test_missing_parents_are_created_0755_root(env: Env) -> None:
    stats = unpack(make_tar(f("x/y/z/file", b"1", uid=1000)), env.dest)
    for p in ("x", "x/y", "x/y/z"):
        s = os.lstat(env.dest / p)
        assert stat.S_ISDIR(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o755
        assert (s.st_uid, s.st_gid) == (0, 0)
    assert os.lstat(env.dest / "x/y/z/file").st_uid == 1000
    assert stats.inodes == 4 and stats.dirs == 0


def test_dot_prefix_and_dot_entry(env: Env) -> None:
    layer = make_tar(
        d("./", mode=0o711, uid=1000, mtime=5555, xattrs={"user.root": b"r"}),
        f("./a", b"a"),
        d("./sub/"),
        f("./sub/./b", b"b"),
        f(".//sub//c", b"c"),
    )
    stats = unpack(layer, env.dest)
    s = os.lstat(env.dest)
    assert stat.S_IMODE(s.st_mode) == 0o711 and s.st_uid == 1000
    assert s.st_mtime_ns == 5555 * 10**9
    assert xattr(env.dest, "user.root") == b"r"
    assert listing(env.dest) == ["a", "sub", "sub/b", "sub/c"]
    assert stats.dirs == 2


@pytest.mark.parametrize(
    "member",
    [f(".", b"x"), sym(".", "/"), sym("./", "/etc"), entry("./", tarfile.FIFOTYPE)],
    ids=["file", "symlink", "symlink-slash", "fifo"],
)
def test_layer_root_can_only_be_a_directory(env: Env, member: Member) -> None:
    with pytest.raises(UnsafeLayer, match="root must be a directory"):
        unpack(make_tar(member), env.dest)


def test_same_owner_false_keeps_our_ids(env: Env) -> None:
    layer = make_tar(f("a", b"", uid=1000, gid=1000), sym("l", "a", uid=1000), d("d", uid=7))
    unpack(layer, env.dest, same_owner=False)
    for n in ("a", "l", "d"):
        assert os.lstat(env.dest / n).st_uid == os.geteuid()


def test_contiguous_type_is_a_regular_file(env: Env) -> None:
    stats = unpack(make_tar(entry("c", tarfile.CONTTYPE, data=b"contiguous")), env.dest)
    assert (env.dest / "c").read_bytes() == b"contiguous" and stats.regular_files == 1


@pytest.mark.parametrize("fmt", ["gnu", "posix-0.0", "posix-0.1", "posix-1.0"])
def test_sparse_files_keep_their_holes(env: Env, tmp_path_factory: Any, fmt: str) -> None:
    tar = shutil.which("tar")
    if (
        tar is None
        or "GNU tar"
        not in subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
    ):
        unavailable("GNU tar is needed to write sparse archives")
    src = tmp_path_factory.mktemp("sparse-src")
    with open(src / "s", "wb") as fh:
        fh.seek(1 << 20)
        fh.write(b"hello")
        fh.seek(5 << 20)
        fh.write(b"world" * 1000)
        fh.truncate(9 << 20)
    args = ["--format=gnu"] if fmt == "gnu" else ["--format=posix", f"--sparse-version={fmt[6:]}"]
    out = subprocess.run(
        [tar, "--sparse", *args, "-cf", "-", "-C", str(src), "s"], capture_output=True, check=True
    ).stdout
    stats = unpack(out, env.dest)
    assert (env.dest / "s").read_bytes() == (src / "s").read_bytes()
    assert os.lstat(env.dest / "s").st_blocks * 512 < 1 << 20
    assert stats.bytes == 9 << 20


def test_sparse_bomb_costs_no_disk(env: Env) -> None:
    size = 1 << 40  # a terabyte of zeros declared in a few header bytes
    member = f(
        "bomb",
        b"abcdeVWXYZ",
        pax={"GNU.sparse.map": f"0,5,{size - 5},5", "GNU.sparse.size": str(size)},
    )
    stats = unpack(make_tar(member), env.dest)
    s = os.lstat(env.dest / "bomb")
    assert s.st_size == size and s.st_blocks < 1024
    with open(env.dest / "bomb", "rb") as fh:
        assert fh.read(5) == b"abcde"
        fh.seek(size - 5)
        assert fh.read() == b"VWXYZ"
    assert stats.bytes == size


@pytest.mark.parametrize("kind", [b"M", b"V", b"D", b"Z"])
def test_multivolume_and_unknown_types_refused(env: Env, kind: bytes) -> None:
    with pytest.raises(UnsafeLayer, match="'thing'"):
        unpack(make_tar(entry("thing", kind, data=b"")), env.dest)


def test_out_of_range_owner_refused(env: Env) -> None:
    with pytest.raises(UnsafeLayer, match="owner"):
        unpack(make_tar(f("a", uid=1 << 32)), env.dest)


@pytest.mark.parametrize(
    ("mtime", "pax", "expected_ns"),
    [
        (0, None, 0),
        (MTIME, {"mtime": "-5.5"}, 0),  # before the epoch: the epoch, as containerd's boundTime
        (MTIME, {"mtime": "1e400"}, 0),  # past what a timespec in ns holds
        (MTIME, {"mtime": "garbage"}, 0),
        (MTIME, {"mtime": "9223372036.854775807"}, (1 << 63) - 1),
        (MTIME, {"mtime": f"{MTIME}.000000001"}, MTIME * 10**9 + 1),
    ],
)
def test_mtime_bounds(env: Env, mtime: int, pax: dict[str, str] | None, expected_ns: int) -> None:
    unpack(make_tar(f("a", mtime=mtime, pax=pax), d("d", mtime=mtime, pax=pax)), env.dest)
    assert os.lstat(env.dest / "a").st_mtime_ns == expected_ns
    assert os.lstat(env.dest / "d").st_mtime_ns == expected_ns


def test_empty_layers(env: Env) -> None:
    assert unpack(b"", env.dest) == UnpackStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert unpack(make_tar(), env.dest).entries == 0
    assert listing(env.dest) == []


def test_dest_must_be_empty(env: Env) -> None:
    (env.dest / "x").touch()
    with pytest.raises(ValueError, match="not empty"):
        unpack(make_tar(f("a")), env.dest)


def test_stream_needs_only_read(env: Env) -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._b.read(n)

    unpack_layer(ReadOnly(make_tar(f("a", b"x"), d("d"))), env.dest)  # type: ignore[arg-type]
    assert listing(env.dest) == ["a", "d"]


@pytest.mark.parametrize(
    "data",
    [
        b"not a tar at all" * 100,
        make_tar(f("a", b"0123456789" * 100))[:700],  # truncated inside the file data
        b"\x00" * 511 + b"\x01",
    ],
    ids=["garbage", "truncated", "bad-checksum"],
)
def test_corrupt_streams_raise_unsafe_layer(env: Env, data: bytes) -> None:
    with pytest.raises(UnsafeLayer, match="corrupt layer"):
        unpack(data, env.dest)


def test_stats_are_exact(env: Env) -> None:
    layer = make_tar(
        d("./"),
        d("d"),
        f("d/f", b"12345"),
        f("g", b"1234567"),
        sym("l", "g"),
        hard("h", "g"),
        entry("p", tarfile.FIFOTYPE),
        entry("c", tarfile.CHRTYPE, dev=(1, 3)),
        f("x/y/z", b"12"),
        f(".wh.gone"),
        f("d/.wh..wh..opq"),
        f(".wh..wh.plnk/1.2", b"aufs"),
        d(".wh..wh.aufs"),
    )
    stats = unpack(layer, env.dest)
    assert stats == UnpackStats(
        entries=13,
        regular_files=3,
        dirs=2,
        symlinks=1,
        hardlinks=1,
        devices=1,
        fifos=1,
        whiteouts=1,
        opaque_dirs=1,
        bytes=14,
        # d, d/f, g, l, p, c, x, x/y, x/y/z and the whiteout device "gone"
        inodes=10,
    )


# -- whiteouts ----------------------------------------------------------------------------------


def test_whiteout_becomes_char_device_0_0(env: Env) -> None:
    stats = unpack(make_tar(f("etc/.wh.foo", uid=1000, gid=1000), f(".wh.bar")), env.dest)
    for p, uid in (("etc/foo", 1000), ("bar", 0)):
        s = os.lstat(env.dest / p)
        assert stat.S_ISCHR(s.st_mode) and s.st_rdev == 0 and s.st_uid == uid
    assert listing(env.dest) == ["bar", "etc", "etc/foo"]
    assert stats.whiteouts == 2 and stats.regular_files == 0


def test_opaque_marker_sets_overlay_xattr(env: Env) -> None:
    stats = unpack(
        make_tar(d("d"), f("d/.wh..wh..opq"), f("new/.wh..wh..opq"), f(".wh..wh..opq")), env.dest
    )
    for p in (env.dest / "d", env.dest / "new", env.dest):
        assert xattr(p, OPAQUE_XATTR) == b"y"
    assert listing(env.dest) == ["d", "new"]
    assert stats.opaque_dirs == 3


def test_aufs_metadata_skipped(env: Env) -> None:
    layer = make_tar(
        d(".wh..wh.plnk"),
        f(".wh..wh.plnk/1234.5678", b"linked"),
        f(".wh..wh.aufs"),
        f("d/.wh..wh.orph"),
    )
    stats = unpack(layer, env.dest)
    assert listing(env.dest) == []  # skipped entries do not even create their parents
    assert stats.entries == 4 and stats.whiteouts == 0
    second = env.dest / "second"
    second.mkdir()
    aufs_link = make_tar(f(".wh..wh.plnk/1.2", b"x"), hard("a", ".wh..wh.plnk/1.2"))
    with pytest.raises(UnsafeLayer, match="aufs metadata"):
        unpack(aufs_link, second)


@pytest.mark.parametrize("name", [".wh.", "d/.wh.", ".wh..", "d/.wh..."])
def test_whiteout_without_a_name_refused(env: Env, name: str) -> None:
    with pytest.raises(UnsafeLayer, match="whiteout without a name"):
        unpack(make_tar(f(name)), env.dest)


def test_whiteouts_only_hide_lower_layers(env: Env) -> None:
    layer = make_tar(
        f("kept", b"mine"),
        f(".wh.kept"),  # this layer's own file stays
        d("dir"),
        f("dir/mine", b"m"),
        f(".wh.dir"),  # this layer's dir stays but hides the lower one: opaque
        f(".wh.again"),
        d("again"),  # deleted, then made anew: opaque
        f(".wh.implicit"),
        f("implicit/x", b"x"),  # likewise, through a missing parent
        f(".wh.refile"),
        f("refile", b"r"),
    )
    unpack(layer, env.dest)
    assert (env.dest / "kept").read_bytes() == b"mine"
    assert (env.dest / "dir/mine").read_bytes() == b"m"
    for p in ("dir", "again", "implicit"):
        assert (env.dest / p).is_dir() and xattr(env.dest / p, OPAQUE_XATTR) == b"y", p
    assert (env.dest / "refile").read_bytes() == b"r"


def test_real_overlay_merged_view(tmp_path: Path) -> None:
    lower, upper, mnt = tmp_path / "l1", tmp_path / "l2", tmp_path / "mnt"
    for p in (lower, upper, mnt):
        p.mkdir()
    unpack(
        make_tar(
            f("a", b"a"),
            f("b", b"b"),
            d("d"),
            f("d/x", b"x"),
            f("d/y", b"y"),
            d("e"),
            f("e/old", b"old"),
            d("g"),
            f("g/old", b"old"),
            d("h"),
            f("h/keep", b"keep"),
        ),
        lower,
    )
    unpack(
        make_tar(
            f(".wh.a"),
            f("d/.wh..wh..opq"),
            f("d/z", b"z"),
            f(".wh.e"),
            d("e"),  # e deleted and recreated in the same layer
            f("e/new", b"new"),
            d("g"),
            f("g/new", b"new"),
            f(".wh.g"),  # whiteout after this layer's own g
            f("h/.wh.keep"),
            f("h/keep", b"replaced"),
        ),
        upper,
    )
    with overlay_view([upper, lower], mnt):
        assert sorted(os.listdir(mnt)) == ["b", "d", "e", "g", "h"]
        assert sorted(os.listdir(mnt / "d")) == ["z"]
        assert (mnt / "b").read_bytes() == b"b" and (mnt / "d/z").read_bytes() == b"z"
        assert sorted(os.listdir(mnt / "e")) == ["new"]
        assert sorted(os.listdir(mnt / "g")) == ["new"]
        assert (mnt / "h/keep").read_bytes() == b"replaced"


# -- hostile layers -----------------------------------------------------------------------------

Build = Callable[[Env], list[Member]]

HOSTILE: list[tuple[str, Build, dict[str, Any], str]] = [
    ("dotdot", lambda e: [f("../evil", b"x")], {}, r"'\.\.' component"),
    ("dotdot-deep", lambda e: [f("a/../../evil", b"x")], {}, r"'\.\.' component"),
    ("dotdot-inside", lambda e: [f("a/../b", b"x")], {}, r"'\.\.' component"),
    ("dotdot-dir", lambda e: [d("../outside/etc", mode=0o777)], {}, r"'\.\.' component"),
    ("absolute", lambda e: [f(str(e.outside / "etc/evil"), b"x")], {}, "absolute"),
    ("absolute-etc", lambda e: [f("/etc/cri-async-unpack-test-evil", b"x")], {}, "absolute"),
    (
        "symlink-abs-parent",
        lambda e: [sym("a", str(e.outside / "etc")), f("a/passwd", b"pwned")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-rel-parent",
        lambda e: [sym("a", "../outside/etc"), f("a/passwd", b"pwned")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-up-up",
        lambda e: [sym("a", "../.."), f("a/file", b"x")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-inside-still-refused",
        lambda e: [d("real"), sym("a", "real"), f("a/file", b"x")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "dir-then-symlink",
        lambda e: [d("a"), sym("a", str(e.outside)), f("a/outside_file", b"x")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-chain",
        lambda e: [sym("l1", "l2"), sym("l2", str(e.outside)), f("l1/outside_file", b"x")],
        {},
        "'l1' is a symbolic link",
    ),
    (
        "symlink-nested",
        lambda e: [d("d"), sym("d/s", "../../outside"), f("d/s/etc/passwd", b"x")],
        {},
        "'d/s' is a symbolic link",
    ),
    (
        "symlink-dir-entry-below",
        lambda e: [sym("a", str(e.outside)), d("a/etc", mode=0o777, uid=1000)],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-then-hardlink-below",
        lambda e: [f("t", b"t"), sym("a", str(e.outside)), hard("a/new", "t")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-fifo-below",
        lambda e: [sym("a", str(e.outside)), entry("a/fifo", tarfile.FIFOTYPE)],
        {},
        "'a' is a symbolic link",
    ),
    (
        "symlink-symlink-below",
        lambda e: [sym("a", str(e.outside)), sym("a/l", "/")],
        {},
        "'a' is a symbolic link",
    ),
    (
        "hardlink-dotdot",
        lambda e: [hard("h", "../outside/outside_file")],
        {},
        r"'\.\.' component",
    ),
    (
        "hardlink-absolute",
        lambda e: [hard("h", str(e.outside / "outside_file"))],
        {},
        "absolute hard link target",
    ),
    (
        "hardlink-through-symlink",
        lambda e: [sym("l", str(e.outside)), hard("h", "l/outside_file")],
        {},
        "'l' is a symbolic link",
    ),
    (
        "hardlink-not-in-layer",
        lambda e: [hard("h", "nothing")],
        {},
        "not an earlier entry",
    ),
    (
        "hardlink-to-dir",
        lambda e: [d("dir"), hard("h", "dir")],
        {},
        "not an earlier entry",
    ),
    (
        "hardlink-to-whiteout",
        lambda e: [f(".wh.x"), hard("h", "x")],
        {},
        "not an earlier entry",
    ),
    ("hardlink-to-self", lambda e: [hard("h", "h")], {}, "itself"),
    ("hardlink-to-root", lambda e: [hard("h", "./")], {}, "layer root"),
    ("whiteout-dotdot", lambda e: [f("../.wh.outside_file")], {}, r"'\.\.' component"),
    (
        "whiteout-through-symlink",
        lambda e: [sym("l", str(e.outside)), f("l/.wh.outside_file")],
        {},
        "'l' is a symbolic link",
    ),
    (
        "opaque-through-symlink",
        lambda e: [sym("l", str(e.outside)), f("l/.wh..wh..opq")],
        {},
        "'l' is a symbolic link",
    ),
    (
        "device-not-allowed",
        lambda e: [entry("sda", tarfile.BLKTYPE, dev=(8, 0))],
        {"allow_devices": False},
        "not allowed",
    ),
    ("nul-in-name", lambda e: [f("x", pax={"path": "a\x00/../../evil"})], {}, "NUL"),
    ("nul-in-hardlink", lambda e: [f("t"), hard("h", "t", pax={"linkpath": "t\x00"})], {}, "NUL"),
    (
        "nul-in-symlink",
        lambda e: [sym("s", "x", pax={"linkpath": "/etc\x00"})],
        {},
        "symbolic link",
    ),
    ("empty-symlink", lambda e: [sym("s", "")], {}, "symbolic link"),
    ("parent-is-file", lambda e: [f("a", b"x"), f("a/b", b"y")], {}, "'a' is not a directory"),
    ("name-too-long", lambda e: [f("n" * 300, b"x")], {}, "too long"),
    (
        "xattr-name-nul",
        lambda e: [f("a", pax={"SCHILY.xattr.user.a\x00b": "v"})],
        {},
        "invalid xattr name",
    ),
]


@pytest.mark.parametrize(
    ("build", "kwargs", "message"),
    [pytest.param(b, k, m, id=i) for i, b, k, m in HOSTILE],
)
def test_hostile_layer_refused_and_nothing_outside_changes(
    env: Env, build: Build, kwargs: dict[str, Any], message: str
) -> None:
    members = build(env)
    with pytest.raises(UnsafeLayer, match=message) as info:
        unpack(make_tar(*members), env.dest, **kwargs)
    assert info.value.entry is not None
    assert not Path("/etc/cri-async-unpack-test-evil").exists()
    # the `env` fixture asserts nothing outside dest changed


def test_nul_survives_tarfile_round_trip() -> None:
    """The NUL cases above are only meaningful if tarfile hands the NUL through."""
    data = make_tar(f("x", pax={"path": "a\x00b"}))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        assert [m.name for m in tf] == ["a\x00b"]


# -- properties ---------------------------------------------------------------------------------

NAMES = st.text(alphabet="abcxyz019._-é日", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not s.startswith(".wh.")
)
FILE = st.tuples(st.just("file"), st.binary(max_size=300), st.integers(0, 0o7777))
LINK = st.tuples(st.just("symlink"), st.text(alphabet="abc/.é", min_size=1, max_size=20))
FIFO = st.tuples(st.just("fifo"), st.integers(0, 0o7777))
TREES = st.recursive(
    st.one_of(FILE, LINK, FIFO),
    lambda kids: st.tuples(
        st.just("dir"), st.dictionaries(NAMES, kids, max_size=4), st.integers(0, 0o7777)
    ),
    max_leaves=14,
)
ROOT = st.tuples(st.just("dir"), st.dictionaries(NAMES, TREES, max_size=5), st.integers(0, 0o7777))
IDS = st.sampled_from([0, 1, 1000, 65534])
TIMES = st.integers(0, 2**33)


def build_tree(path: Path, node: Any, draw: Any) -> None:
    """Create ``node`` at ``path``; owners and mtimes (whole seconds: tarfile's add keeps a
    float) are drawn from hypothesis as we go."""
    kind = node[0]
    if kind == "dir":
        if not path.exists():
            path.mkdir()
        for name, child in sorted(node[1].items()):
            build_tree(path / name, child, draw)
        mode = node[2]
    elif kind == "file":
        path.write_bytes(node[1])
        mode = node[2]
    elif kind == "fifo":
        os.mkfifo(path)
        mode = node[1]
    else:
        os.symlink(node[1], path)
        mode = None
    os.chown(path, draw(IDS), draw(IDS), follow_symlinks=False)
    if mode is not None:
        os.chmod(path, mode)
    t = draw(TIMES) * 10**9  # after the children: their creation changed it
    os.utime(path, ns=(t, t), follow_symlinks=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=ROOT, data=st.data())
def test_random_trees_round_trip_exactly(tree: Any, data: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp) / "src", Path(tmp) / "dest"
        src.mkdir()
        dest.mkdir()
        build_tree(src, tree, data.draw)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(src, arcname=".")
        unpack(buf.getvalue(), dest)
        assert describe(dest) == describe(src)


def _base_layer(outside: Path) -> bytes:
    return make_tar(
        d("./"),
        d("etc", mode=0o755),
        f("etc/passwd", b"root:x:0:0", xattrs={"user.a": b"1"}),
        sym("esc", "../outside"),
        sym("abs", str(outside)),
        f("esc2", b"x"),
        hard("etc/hl", "etc/passwd"),
        f(".wh.gone"),
        f("etc/.wh..wh..opq"),
        entry("fifo", tarfile.FIFOTYPE),
        f("sub/deep/file", b"y" * 600),
    )


def _assert_contained(make: Callable[[Env], bytes]) -> None:
    """Unpack ``make(env)``: success or UnsafeLayer (anything else propagates), nothing outside."""
    with tempfile.TemporaryDirectory() as tmp:
        e = make_env(Path(tmp))
        data = make(e)
        before = e.watch()
        with contextlib.suppress(UnsafeLayer):
            unpack(data, e.dest)
        assert e.watch() == before


def _fix_checksums(data: bytearray) -> None:
    """Make every ustar header block valid again, so that mutations reach the unpacker."""
    for off in range(0, len(data) - 511, 512):
        block = data[off : off + 512]
        if block[257:262] == b"ustar":
            block[148:156] = b" " * 8
            data[off + 148 : off + 156] = b"%06o\0 " % sum(block)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000))
@example(data=b"\x00" * 1024)
@example(data=b"")
def test_random_bytes_only_raise_unsafe_layer(data: bytes) -> None:
    _assert_contained(lambda e: data)


# Where to hit a header: anywhere, the name, the type flag, the link name, the device numbers.
IN_BLOCK = st.one_of(
    st.integers(0, 511),
    st.integers(0, 99),
    st.just(156),
    st.integers(157, 256),
    st.integers(329, 344),
)
BYTE = st.one_of(st.integers(0, 255), st.sampled_from(list(b"/.0123456789 =\x00x")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, 64), IN_BLOCK, BYTE), min_size=1, max_size=6),
    fix=st.booleans(),
    cut=st.none() | st.integers(0, 1 << 14),
)
def test_mutated_layers_only_raise_unsafe_layer_and_stay_inside(
    edits: list[tuple[int, int, int]], fix: bool, cut: int | None
) -> None:
    def make(e: Env) -> bytes:
        data = bytearray(_base_layer(e.outside))
        blocks = len(data) // 512
        for block, pos, value in edits:
            data[(block % blocks) * 512 + pos] = value
        if fix:
            _fix_checksums(data)
        if cut is not None:
            data = data[: cut % len(data)]
        return bytes(data)

    _assert_contained(make)


# -- cached directory descriptors ---------------------------------------------------------------
# unpack_layer keeps directory descriptors open between entries. These layers change what a
# cached path names after it was cached: the cache must never let a later entry through.


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


CACHE_INVALIDATION: list[tuple[str, Build, str]] = [
    (
        "dir-then-symlink-after-use",
        lambda e: [d("a"), f("a/x", b"x"), sym("a", str(e.outside)), f("a/outside_file", b"x")],
        "'a' is a symbolic link",
    ),
    (
        "implicit-dir-then-symlink",
        lambda e: [f("a/b/x", b"x"), sym("a/b", str(e.outside)), f("a/b/outside_file", b"x")],
        "'a/b' is a symbolic link",
    ),
    (
        "ancestor-of-cached-dir-then-symlink",
        lambda e: [f("a/b/c/x", b"x"), sym("a", str(e.outside)), f("a/b/c/y", b"x")],
        "'a' is a symbolic link",
    ),
    (
        "ancestor-then-relative-symlink",
        lambda e: [f("a/etc/x", b"x"), sym("a", "../outside"), f("a/etc/passwd", b"pwned")],
        "'a' is a symbolic link",
    ),
    (
        "cached-dir-then-file",
        lambda e: [f("a/b/x", b"x"), f("a", b"now a file"), f("a/b/y", b"y")],
        "'a' is not a directory",
    ),
    (
        "cached-dir-then-fifo",
        lambda e: [f("a/x", b"x"), entry("a", tarfile.FIFOTYPE), f("a/y", b"y")],
        "'a' is not a directory",
    ),
    (
        "cached-dir-then-hardlink-to-symlink",
        lambda e: [sym("s", str(e.outside)), f("a/x", b"x"), hard("a", "s"), f("a/etc", b"y")],
        "'a' is a symbolic link",
    ),
    (
        "hardlink-target-dir-then-symlink",
        lambda e: [f("t/x", b"x"), sym("t", str(e.outside)), hard("h", "t/outside_file")],
        "'t' is a symbolic link",
    ),
    (
        "whiteout-of-cached-dir-then-symlink",
        lambda e: [f("a/x", b"x"), f(".wh.a"), sym("a", str(e.outside)), f("a/etc", b"y")],
        "'a' is a symbolic link",
    ),
    (
        "opaque-after-symlink",
        lambda e: [f("a/x", b"x"), sym("a", str(e.outside)), f("a/.wh..wh..opq")],
        "'a' is a symbolic link",
    ),
    (
        "dir-entry-after-symlink",
        lambda e: [d("a/etc"), sym("a", str(e.outside)), d("a/etc", mode=0o777, uid=1000)],
        "'a' is a symbolic link",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [pytest.param(b, m, id=i) for i, b, m in CACHE_INVALIDATION]
)
def test_cached_directory_replaced_later_is_not_used(env: Env, build: Build, message: str) -> None:
    fds = _open_fds()
    with pytest.raises(UnsafeLayer, match=message) as info:
        unpack(make_tar(*build(env)), env.dest)
    assert info.value.entry is not None
    assert _open_fds() == fds  # every cached descriptor closed, on failure too
    # the `env` fixture asserts nothing outside dest changed


def test_cached_directory_replaced_by_a_new_directory(env: Env) -> None:
    """Files after the replacement go into the new directory, not the removed one."""
    layer = make_tar(
        d("a", mode=0o700),
        f("a/old", b"old"),
        f("a/b/deep", b"deep"),
        f("a", b"file now"),
        d("a", mode=0o750),
        f("a/new", b"new"),
        f("a/b/again", b"again"),
        f("c/x", b"x"),
        f(".wh.c"),  # this layer's own c stays, made opaque
        f("c/y", b"y"),
    )
    unpack(layer, env.dest)
    assert listing(env.dest) == ["a", "a/b", "a/b/again", "a/new", "c", "c/x", "c/y"]
    assert stat.S_IMODE(os.lstat(env.dest / "a").st_mode) == 0o750
    assert (env.dest / "a/new").read_bytes() == b"new"
    assert xattr(env.dest / "c", OPAQUE_XATTR) == b"y"


def test_name_spellings_reach_the_same_file(env: Env) -> None:
    """``a//b``, ``./a/./b`` and ``a/b`` are one name: later entries replace earlier ones."""
    layer = make_tar(
        f("a/b", b"1"),
        f("a//b", b"2", mode=0o600),
        hard("a/c", "./a//b"),
        f("./a/./b", b"3", mode=0o640),
        d("a/", mode=0o711),
        d("./a//", mode=0o750),
    )
    unpack(layer, env.dest)
    assert listing(env.dest) == ["a", "a/b", "a/c"]
    assert (env.dest / "a/b").read_bytes() == b"3"
    assert stat.S_IMODE(os.lstat(env.dest / "a/b").st_mode) == 0o640
    assert (env.dest / "a/c").read_bytes() == b"2"  # the link kept the replaced inode
    assert stat.S_IMODE(os.lstat(env.dest / "a").st_mode) == 0o750


def test_more_directories_than_the_cache_holds(env: Env) -> None:
    """Evicted directories are walked to again; replacing one still refuses what is below."""
    names = [f"d{i:03d}" for i in range(120)]
    members = [f(f"{n}/sub/file", n.encode()) for n in names]
    members += [f(f"{n}/sub/again", n.encode()) for n in reversed(names)]
    # a deep hard-link target: resolving it walks more directories than the cache holds
    deep = "/".join(f"x{i}" for i in range(80))
    members += [f(f"{deep}/target", b"t"), hard("d000/sub/link", f"{deep}/target")]
    fds = _open_fds()
    stats = unpack(make_tar(*members), env.dest)
    assert _open_fds() == fds
    for n in names:
        assert (env.dest / n / "sub/file").read_bytes() == n.encode()
        assert (env.dest / n / "sub/again").read_bytes() == n.encode()
    t, link = os.lstat(env.dest / deep / "target"), os.lstat(env.dest / "d000/sub/link")
    assert t.st_ino == link.st_ino and t.st_nlink == 2
    assert stats.regular_files == 241 and stats.hardlinks == 1

    second = env.dest / "second"
    second.mkdir()
    evil = [f(f"{n}/sub/file", b"x") for n in names]
    evil += [sym("d000", str(env.outside)), f("d000/etc/passwd", b"pwned")]
    with pytest.raises(UnsafeLayer, match="'d000' is a symbolic link"):
        unpack(make_tar(*evil), second)


@pytest.mark.parametrize("size", [1, 2])
def test_tiny_cache_evicting_all_the_time(
    env: Env, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Every walk evicts: a hard link's parent (resolved before its target) stays usable, and
    the invalidation cases still refuse."""
    import cri_async.registry.layertree as layertree_module

    monkeypatch.setattr(layertree_module, "_DIR_CACHE", size)
    layer = make_tar(
        f("t/u/v/target", b"t"),
        f("a/b/c/x", b"x"),
        hard("a/b/c/link", "t/u/v/target"),
        hard("a/b/c/x", "t/u/v/target"),  # replaces x by a link
        f("t/u/v/w/y", b"y"),
        d("a/b"),
        f("a/b/c/z", b"z"),
    )
    fds = _open_fds()
    unpack(layer, env.dest)
    assert _open_fds() == fds
    ino = os.lstat(env.dest / "t/u/v/target").st_ino
    assert os.lstat(env.dest / "a/b/c/link").st_ino == ino
    assert os.lstat(env.dest / "a/b/c/x").st_ino == ino
    assert listing(env.dest / "a") == ["b", "b/c", "b/c/link", "b/c/x", "b/c/z"]
    for i, (_, build, message) in enumerate(CACHE_INVALIDATION):
        dest = env.dest / f"hostile{i}"
        dest.mkdir()
        with pytest.raises(UnsafeLayer, match=message):
            unpack(make_tar(*build(env)), dest)
    assert _open_fds() == fds


def test_new_files_owned_as_the_header_says_in_setgid_directories(env: Env) -> None:
    """Ownership is not left to what the kernel gives a new file (setgid parents hand down
    their group): chown is skipped only when the owner cannot differ."""
    layer = make_tar(
        d("./", mode=0o2775, gid=1000),
        f("top", b"t"),  # root:root in a setgid root owned by group 1000
        d("g", mode=0o2775, gid=2000),
        f("g/root", b"r"),
        f("g/grp", b"g", gid=2000),
        f("g/user", b"u", uid=3000, gid=0),
        d("plain", gid=4000),
        f("plain/root", b"r"),
        f("implicit/in/root", b"r"),  # parents made 0755 root:root
        d("g", mode=0o755, gid=0),  # the same directory again, no longer setgid
        f("g/later", b"l"),
        f("g/sub/x", b"x"),  # a parent created in g
    )
    unpack(layer, env.dest)

    def owner(p: str) -> tuple[int, int]:
        s = os.lstat(env.dest / p)
        return s.st_uid, s.st_gid

    assert owner(".") == (0, 1000)
    assert owner("top") == (0, 0)
    assert owner("g/root") == (0, 0)
    assert owner("g/grp") == (0, 2000)
    assert owner("g/user") == (3000, 0)
    assert owner("plain/root") == (0, 0)
    assert owner("implicit/in/root") == (0, 0)
    assert owner("g") == (0, 0) and owner("g/later") == (0, 0)
    assert owner("g/sub") == (0, 0) and owner("g/sub/x") == (0, 0)


def test_descriptors_closed_after_success_and_failure(env: Env) -> None:
    fds = _open_fds()
    unpack(make_tar(*(f(f"d{i}/e{j}/f", b"x") for i in range(10) for j in range(10))), env.dest)
    assert _open_fds() == fds
    second = env.dest / "second"
    second.mkdir()
    with pytest.raises(UnsafeLayer):
        unpack(make_tar(f("a/b/c", b"x"), f("a/b/c/d", b"y")), second)
    assert _open_fds() == fds


# -- reading the tar stream ---------------------------------------------------------------------


class Trickle(io.RawIOBase):
    """A stream whose reads return odd, short pieces (headers and data split anywhere)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = sizes or [1]
        self._i = 0

    def read(self, n: int = -1) -> bytes:
        k = self._sizes[self._i % len(self._sizes)]
        self._i += 1
        out = bytes(self._data[self._pos : self._pos + min(k, n)])
        self._pos += len(out)
        return out


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=8))
def test_short_reads_anywhere_give_the_same_tree(sizes: list[int]) -> None:
    data = MIXED_LAYER
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        a.mkdir()
        b.mkdir()
        sa = unpack(data, a)
        sb = unpack_layer(Trickle(data, [*sizes, 4096]), b)  # type: ignore[arg-type]
        assert sa == sb

        def tree(root: Path) -> dict[str, tuple[Any, ...]]:  # parents made now: no mtime
            return {k: v[:3] if stat.S_ISDIR(v[0]) else v for k, v in describe(root).items()}

        assert tree(a) == tree(b)
        assert xattr(b / "é/日本" / ("long-" + "n" * 150), "user.x") == b"\xff"


def test_truncated_layers_are_corrupt(env: Env) -> None:
    data = make_tar(f("a", b"x" * 3000), f("b", b"y" * 10))  # b's header at 3584
    # in a's data, in a's padding, in b's header (a bad later header ends the archive, as for
    # tarfile), in b's data
    for cut, outcome in ((1024, "corrupt"), (3522, "corrupt"), (3684, "ok"), (4100, "corrupt")):
        dest = env.dest / str(cut)
        dest.mkdir()
        if outcome == "corrupt":
            with pytest.raises(UnsafeLayer, match="unexpected end of data"):
                unpack(data[:cut], dest)
        else:
            unpack(data[:cut], dest)
            assert listing(dest) == ["a"]
    dest = env.dest / "nomarker"
    dest.mkdir()
    unpack(data[:4608], dest)  # no end-of-archive marker: fine, as for tarfile
    assert (dest / "b").read_bytes() == b"y" * 10


def test_empty_stream_is_an_empty_layer_and_short_one_corrupt(env: Env) -> None:
    assert unpack(b"", env.dest).entries == 0
    with pytest.raises(UnsafeLayer, match="corrupt layer"):
        unpack(b"x" * 100, env.dest)
    assert unpack(b"\0" * 512, env.dest).entries == 0
