"""Reading a file inside an image's root filesystem never reaches the host's files."""

import os
import threading
from pathlib import Path

import pytest

from cri_async.rootfs import RootfsError, read_in_root


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    p = tmp_path / "host" / "passwd"
    p.parent.mkdir()
    p.write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    return p


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    return r


def test_plain_file_and_missing(root: Path) -> None:
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    assert read_in_root(root, "/etc/passwd") == b"root:x:0:0::/root:/bin/sh\n"
    assert read_in_root(root, "/etc/group") is None
    assert read_in_root(root, "/nodir/group") is None


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "relative-dotdot"])
def test_links_resolve_inside_the_root(root: Path, host_secret: Path, kind: str) -> None:
    target = {
        "absolute": str(host_secret),
        "dotdot": "/../../../../../../.." + str(host_secret),
        "relative-dotdot": "../" * 40 + str(host_secret).lstrip("/"),
    }[kind]
    os.symlink(target, root / "etc/passwd")
    assert read_in_root(root, "/etc/passwd") is None  # no such file inside the image
    # The same path inside the image is what the link means.
    inside = root / str(host_secret).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("imageuser:x:7:7::/:/bin/sh\n")
    assert read_in_root(root, "/etc/passwd") == b"imageuser:x:7:7::/:/bin/sh\n"


def test_linked_parent_directory(root: Path, host_secret: Path) -> None:
    (root / "etc").rmdir()
    os.symlink(str(host_secret.parent), root / "etc")
    assert read_in_root(root, "/etc/passwd") is None


def test_magic_link_is_not_followed(root: Path) -> None:
    os.symlink("/proc/self/root/etc/passwd", root / "etc/passwd")
    proc = root / "proc/self"
    proc.mkdir(parents=True)
    assert read_in_root(root, "/etc/passwd") is None


def test_fifo_does_not_block(root: Path) -> None:
    os.mkfifo(root / "etc/passwd")
    done = threading.Event()

    def attempt() -> None:
        with pytest.raises(RootfsError, match="not a regular file"):
            read_in_root(root, "/etc/passwd")
        done.set()

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert done.is_set()


def test_directory_and_oversized(root: Path) -> None:
    (root / "etc/passwd").mkdir()
    with pytest.raises(RootfsError, match="not a regular file"):
        read_in_root(root, "/etc/passwd")
    (root / "etc/group").write_bytes(b"x" * 100)
    with pytest.raises(RootfsError, match="at most 99"):
        read_in_root(root, "/etc/group", limit=99)
    assert read_in_root(root, "/etc/group", limit=100) == b"x" * 100


def test_link_loop(root: Path) -> None:
    os.symlink("/etc/passwd", root / "etc/passwd")
    with pytest.raises(RootfsError, match="cannot open"):
        read_in_root(root, "/etc/passwd")


def test_resolve_in_root(root: Path, host_secret: Path) -> None:
    from cri_async.rootfs import resolve_in_root

    (root / "mnt").mkdir()
    os.symlink(str(host_secret.parent), root / "mnt/abs")
    os.symlink("../../../../../../" + str(host_secret.parent).lstrip("/"), root / "mnt/rel")
    os.symlink("sub/../../etc", root / "mnt/etc")
    inside = str(host_secret.parent)
    assert resolve_in_root(root, "/mnt/abs/x") == inside + "/x"
    assert resolve_in_root(root, "mnt/rel/x/") == inside + "/x"
    assert resolve_in_root(root, "/mnt/etc/passwd") == "/etc/passwd"
    assert resolve_in_root(root, "/../../mnt/./x") == "/mnt/x"
    os.symlink("loop", root / "loop")
    with pytest.raises(RootfsError, match="too many levels"):
        resolve_in_root(root, "/loop/x")


def test_make_mount_target(root: Path, host_secret: Path) -> None:
    from cri_async.rootfs import make_mount_target

    host_dir = host_secret.parent
    before = sorted(os.listdir(host_dir))
    (root / "mnt").mkdir()
    os.symlink(str(host_dir), root / "mnt/abs")
    make_mount_target(root, "/mnt/abs/x/y", directory=True)
    make_mount_target(root, "/mnt/abs/file", directory=False)
    assert sorted(os.listdir(host_dir)) == before
    assert (root / str(host_dir).lstrip("/") / "x/y").is_dir()
    assert (root / str(host_dir).lstrip("/") / "file").is_file()
    (root / "etc/hosts").write_text("keep\n")
    make_mount_target(root, "/etc/hosts", directory=False)
    assert (root / "etc/hosts").read_text() == "keep\n"
