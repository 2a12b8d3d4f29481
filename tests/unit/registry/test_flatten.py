"""flatten: the deepest snapshots of a tall image merged into one, exactly as overlayfs shows
them stacked (whiteouts, opaque directories, hard links, symlinks, owners, modes, xattrs).

Snapshots are made by the real unpacker from tars; the merged result is compared with what a
real overlay mount of the same snapshots shows, and, for 600 and 1000 layers (beyond what one
mount can stack), with a model of the layers applied one after the other.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from cri_async.registry.flatten import flatten
from cri_async.registry.inflate import Cancelled
from cri_async.registry.layertree import OPAQUE_XATTR
from cri_async.registry.snapshots import SnapshotStore, flat_id
from cri_async.registry.unpack import unpack_layer
from tests.support.prereq import unavailable
from tests.unit.registry.layers import (
    Member,
    d,
    describe,
    entry,
    f,
    hard,
    make_tar,
    need_root,
    overlay_view,
    sym,
    xattr,
)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    need_root()


def snapshots(root: Path, layers: list[list[Member]]) -> list[Path]:
    """Each layer unpacked into its own directory, bottom first."""
    out = []
    for i, members in enumerate(layers):
        p = root / f"L{i:04d}"
        p.mkdir()
        unpack_layer(io.BytesIO(make_tar(*members)), p)
        out.append(p)
    return out


def view(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a container sees under ``root``: describe() plus device numbers and user xattrs."""
    out = describe(root)
    for rel, info in out.items():
        p = root / rel
        extra: tuple[Any, ...] = ()
        if stat.S_ISCHR(info[0]) or stat.S_ISBLK(info[0]):
            extra += (os.lstat(p).st_rdev,)
        names = sorted(n for n in os.listxattr(p, follow_symlinks=False) if n.startswith("user."))
        extra += tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names)
        out[rel] = info + extra
    return out


def wh(path: str) -> Member:
    head, _, base = path.rpartition("/")
    return f(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opq(path: str) -> Member:
    return f(f"{path}/.wh..wh..opq")


LAYERS: list[list[Member]] = [
    [
        d("etc", mode=0o750, uid=5, gid=6, mtime=100),
        f("etc/passwd", b"root:x:0:0\n", mode=0o640, uid=1000, gid=1000, xattrs={"user.a": b"1"}),
        f("etc/gone", b"gone"),
        d("data", xattrs={"user.dir": b"low"}),
        f("data/old", b"old"),
        f("bin/tool", b"#!/bin/sh\n", mode=0o4755),
        hard("bin/hard", "bin/tool"),
        sym("bin/link", "/bin/tool"),
        sym("bin/rel", "../etc/passwd"),
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        f("x/y/z", b"deep"),
        f("fd", b"a file, later a directory"),
        f("df/a", b"in a directory, later a file"),
        f("keep/one", b"1"),
        d("meta", mode=0o711, uid=3, xattrs={"user.dir": b"only here"}),
        f("meta/f", b"f"),
    ],
    [
        wh("etc/gone"),
        opq("data"),
        f("data/new", b"new"),
        d("etc", mode=0o755, uid=0, gid=0, mtime=200),
        wh("x"),
        f("keep/two", b"2"),
        f("lower/only", b"l"),
    ],
    [
        d("x", mode=0o700),  # whited out below: a new, empty x
        f("x/new", b"x"),
        d("fd", mode=0o711),
        f("fd/inner", b"i"),
        f("df", b"now a file"),
        sym("bin/link", "tool"),  # replaced: relative now
        f("keep/three", b"3", xattrs={"user.b": b"\xff\x00"}),
        opq("lower"),
    ],
]


def test_flatten_is_what_overlayfs_shows(tmp_path: Path) -> None:
    lowers = snapshots(tmp_path, LAYERS)
    flat = tmp_path / "flat"
    flat.mkdir()
    stats = flatten(lowers, flat)
    with overlay_view(list(reversed(lowers)), tmp_path / "mnt") as mnt:
        assert view(flat) == view(mnt)

    files = {str(p.relative_to(flat)) for p in flat.rglob("*")}
    assert "etc/gone" not in files and "data/old" not in files and "x/y" not in files
    assert {"data/new", "x/new", "fd/inner", "keep/one", "keep/two", "keep/three"} <= files
    assert "lower" in files and "lower/only" not in files  # opaque, emptied by the top layer
    # deletions are applied, not recorded: no whiteout devices, no opaque markers
    for p in flat.rglob("*"):
        st = os.lstat(p)
        assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0), p
        assert xattr(p, OPAQUE_XATTR) is None, p
    # directories take the topmost layer's metadata; files keep their inode (hard links)
    etc = os.lstat(flat / "etc")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_mtime_ns) == (0o755, 0, 200 * 10**9)
    assert xattr(flat / "meta", "user.dir") == b"only here"
    assert xattr(flat / "data", "user.dir") is None  # the opaque layer's own data is on top
    passwd = os.lstat(flat / "etc/passwd")
    assert passwd.st_ino == os.lstat(lowers[0] / "etc/passwd").st_ino
    assert (stat.S_IMODE(passwd.st_mode), passwd.st_uid) == (0o640, 1000)
    assert xattr(flat / "etc/passwd", "user.a") == b"1"
    tool = os.lstat(flat / "bin/tool")
    assert tool.st_mode & stat.S_ISUID and tool.st_ino == os.lstat(flat / "bin/hard").st_ino
    assert os.readlink(flat / "bin/link") == "tool" and os.readlink(flat / "bin/rel") == (
        "../etc/passwd"
    )
    assert os.lstat(flat / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(flat / "run/fifo").st_mode)
    assert (flat / "df").read_bytes() == b"now a file"
    assert stats.copies == 0 and stats.bytes == 0 and stats.layers == 3
    assert stats.links == sum(1 for p in flat.rglob("*") if not p.is_dir() or p.is_symlink())


def test_symlinks_in_snapshots_are_never_followed(tmp_path: Path) -> None:
    """A layer's symlink where a lower layer has a directory replaces it; nothing is read or
    made through it, even when it points at the other layers or the host."""
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc/secret").write_text("host")
    lowers = snapshots(
        tmp_path,
        [
            [f("a/inner", b"i"), f("etc/passwd", b"p")],
            [sym("a", str(outside / "etc")), sym("etc", "/etc")],
            [f("b/c", b"c")],
        ],
    )
    flat = tmp_path / "flat"
    flat.mkdir()
    flatten(lowers, flat)
    assert os.readlink(flat / "a") == str(outside / "etc")
    assert os.readlink(flat / "etc") == "/etc"
    assert sorted(os.listdir(flat)) == ["a", "b", "etc"]
    assert sorted(os.listdir(outside / "etc")) == ["secret"]


def test_inode_out_of_links_is_copied(tmp_path: Path) -> None:
    lowers = snapshots(
        tmp_path,
        [[f("f", b"data" * 1000, mode=0o751, uid=7, gid=8, xattrs={"user.k": b"v"})], [f("g")]],
    )
    target = lowers[0] / "f"
    extra = tmp_path / "links"
    extra.mkdir()
    try:
        for i in range(70_000):  # ext4 allows 65,000 links per inode
            os.link(target, extra / str(i))
    except OSError as e:
        if e.errno != 31:  # EMLINK
            raise
    else:
        unavailable("the test filesystem has no link limit (EMLINK never comes)")
    flat = tmp_path / "flat"
    flat.mkdir()
    stats = flatten(lowers, flat)
    got, want = os.lstat(flat / "f"), os.lstat(target)
    assert got.st_ino != want.st_ino and stats.copies == 1 and stats.bytes == 4000
    assert (flat / "f").read_bytes() == b"data" * 1000
    assert (got.st_mode, got.st_uid, got.st_gid, got.st_mtime_ns) == (
        want.st_mode,
        want.st_uid,
        want.st_gid,
        want.st_mtime_ns,
    )
    assert xattr(flat / "f", "user.k") == b"v"


# -- tall images -------------------------------------------------------------------------------


def tall_image(n: int) -> list[list[Member]]:
    """``n`` layers that add, delete and re-create files and empty directories (opaque),
    below and above any merge boundary."""
    layers: list[list[Member]] = [
        [d("data"), d("opq"), d("opq2"), *(f(f"keep/k{i}", b"k") for i in range(5))]
    ]
    for i in range(1, n):
        members = [f(f"data/f{i}", str(i).encode())]
        if i % 7 == 0:
            members.append(wh(f"data/f{i - 3}"))
        if i in (40, 45, 515):
            members.append(f(f"opq{'2' if i > 100 else ''}/{i}", b"hidden later"))
        if i == 80:
            members = [opq("opq"), f("opq/c", b"c"), *members]
        if i == 530:
            members = [opq("opq2"), f("opq2/y", b"y"), *members]
        if i == 300:
            members.append(wh("data/f200"))
        if i == 450:
            members.append(wh("data/f449"))  # below the boundary of 1000, above that of 600
        if i == 550:
            members.append(wh("data/f500"))  # above the boundary of 600 and 1000
        if i == n - 1:
            members.append(f("data/f4", b"back"))  # deleted at 7, made again on top
        layers.append(members)
    return layers


def applied(layers: list[list[Member]]) -> dict[str, bytes]:
    """The regular files the layers leave, applied one after the other (OCI layer.md)."""
    files: dict[str, bytes] = {}
    for members in layers:
        for ti, data in members:
            head, _, base = ti.name.rpartition("/")
            if base == ".wh..wh..opq":
                files = {k: v for k, v in files.items() if not k.startswith(head + "/")}
            elif base.startswith(".wh."):
                gone = f"{head}/{base[4:]}" if head else base[4:]
                files = {k: v for k, v in files.items() if k != gone}
            elif data is not None:
                files[ti.name] = data
    return files


def regular_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("n", [600, 1000])
def test_tall_images_merge_to_one_mountable_stack(tmp_path: Path, n: int) -> None:
    layers = tall_image(n)
    lowers = snapshots(tmp_path, layers)
    store = SnapshotStore(tmp_path / "snapshots")
    store.open()
    depth = n - 500 + 1  # the stack is then the merged snapshot plus 499 layers: 500
    bottom = [f"sha256:{i:064x}" for i in range(depth)]
    for cid, p in zip(bottom, lowers, strict=False):
        os.rename(p, store.path(cid))
    flat = flat_id(bottom[-1])
    info = store._flatten_sync(flat, bottom)
    assert info.chain_id == flat and info.bytes == 0
    assert not [p for p in store.root.iterdir() if p.name.startswith("tmp-")]

    got_flat = regular_files(store.path(flat))
    assert got_flat == applied(layers[:depth])
    assert "opq/40" not in got_flat and "opq/c" in got_flat

    stack = [*reversed(lowers[depth:]), store.path(flat)]
    assert len(stack) == 500
    with overlay_view(stack, tmp_path / "mnt") as mnt:
        got = regular_files(mnt)
    assert got == applied(layers)
    assert (
        "data/f500" not in got
        and "data/f200" not in got
        and got["data/f4"] == b"back"
        and "opq2/515" not in got
    )


def test_flatten_stops_when_cancelled_and_leaves_no_temporary_dir(tmp_path: Path) -> None:
    lowers = snapshots(tmp_path, [[f(f"d{i}/x") for i in range(20)], [f("y")]])
    store = SnapshotStore(tmp_path / "snapshots")
    store.open()
    ids = [f"sha256:{i:064x}" for i in range(2)]
    for cid, p in zip(ids, lowers, strict=True):
        os.rename(p, store.path(cid))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        store._flatten_sync(flat_id(ids[-1]), ids, cancel)
    assert sorted(p.name for p in store.root.iterdir()) == sorted(i[7:] for i in ids)


def test_flatten_needs_an_empty_destination(tmp_path: Path) -> None:
    lowers = snapshots(tmp_path, [[f("a")]])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        flatten(lowers, dest)
