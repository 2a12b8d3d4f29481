"""Pinned namespaces and overlay root filesystems on the real kernel (root needed)."""

import fcntl
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cri_async import files, linux, rootfs
from cri_async.core.model import IDMapping, NamespaceMode, UserNamespace
from cri_async.network.pins import NamespacePinner, PinError
from tests.support.prereq import need_root

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _need_root() -> None:
    need_root()


@pytest.fixture
async def pinner(tmp_path: Path) -> AsyncIterator[NamespacePinner]:
    p = NamespacePinner(tmp_path / "ns")
    yield p
    for sid in p.pinned():  # even when the test failed half-way
        await p.unpin(sid)
    linux.umount(str(tmp_path / "ns"))


async def test_pins_share_namespaces_and_unpin_cleanly(
    pinner: NamespacePinner, tmp_path: Path
) -> None:
    mine = {k: os.readlink(f"/proc/thread-self/ns/{k}") for k in ("net", "ipc", "uts")}
    pins = await pinner.pin("pod1", "web-0", net=True, ipc=True, uts=True)
    # Pinning happens on a thread of its own: this thread is still in the host namespaces.
    assert mine == {k: os.readlink(f"/proc/thread-self/ns/{k}") for k in ("net", "ipc", "uts")}
    assert os.uname().nodename != "web-0"
    assert pins.net and pins.ipc and pins.uts
    out = subprocess.run(
        [
            "nsenter",
            f"--uts={pins.uts}",
            f"--net={pins.net}",
            "sh",
            "-c",
            "hostname; ip -o link show",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "web-0"
    links = [line.split(":")[1].strip() for line in out[1:]]
    assert links == ["lo"] and "UP" in out[1]  # loopback only, and up
    host_net = os.readlink("/proc/self/ns/net")
    ino = os.stat(pins.net).st_ino
    assert f"net:[{ino}]" != host_net
    # Host-network pods pin only what they own.
    hostnet = await pinner.pin("pod2", "h", net=False, ipc=True, uts=False)
    assert hostnet.net is None and hostnet.uts is None and hostnet.ipc
    assert pinner.pinned() == {"pod1", "pod2"}
    for sid in ("pod1", "pod2", "pod1", "unknown"):
        await pinner.unpin(sid)
    assert pinner.pinned() == set()
    assert not [m for m in linux.mountinfo() if m[0].startswith(str(tmp_path / "ns") + "/")]


async def test_overlay_rootfs_short_and_long(tmp_path: Path) -> None:
    lowers = []
    for i in range(80):  # ~80 long paths: far past the 4 KiB legacy option limit
        d = tmp_path / f"snapshot-{'x' * 40}-{i:03d}"
        d.mkdir()
        (d / f"f{i}").write_text(str(i))
        (d / "shared").write_text(str(i))
        lowers.append(str(d))
    top_first = lowers[::-1]
    assert len(rootfs.overlay_options(top_first, "u", "w")) > 4096
    target = tmp_path / "rootfs"
    await rootfs.mount_overlay(target, top_first, tmp_path / "upper", tmp_path / "work")
    try:
        assert (target / "shared").read_text() == "79"  # the top layer wins
        assert len(list(target.iterdir())) == 81
        (target / "new").write_text("w")  # writes land in the upper dir
        assert (tmp_path / "upper" / "new").read_text() == "w"
    finally:
        assert await rootfs.unmount(target)
    assert not await rootfs.unmount(target)
    short = tmp_path / "short"
    await rootfs.mount_overlay(short, lowers[:2][::-1], tmp_path / "u2", tmp_path / "w2")
    assert sorted(p.name for p in short.iterdir()) == ["f0", "f1", "shared"]
    await rootfs.unmount(short)
    with pytest.raises(rootfs.RootfsError):
        await rootfs.mount_overlay(tmp_path / "none", [], tmp_path / "u3", tmp_path / "w3")


USERNS = UserNamespace(
    NamespaceMode.POD, (IDMapping(1_000_000, 0, 65536),), (IDMapping(2_000_000, 0, 65536),)
)


def _owner_ino(ns_file: str) -> int:
    """The inode of the user namespace owning the namespace at ``ns_file`` (NS_GET_USERNS)."""
    fd = os.open(ns_file, os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, 0xB701)  # NS_GET_USERNS returns a new fd
    finally:
        os.close(fd)
    try:
        return os.fstat(owner).st_ino
    finally:
        os.close(owner)


async def test_pins_in_a_user_namespace(pinner: NamespacePinner) -> None:
    """The pod's user namespace is pinned with the mappings asked for and owns the pod's
    other namespaces (so root in its containers may mount sysfs and proc for them)."""
    pins = await pinner.pin(
        "userns-pod",
        "web-1",
        net=True,
        ipc=True,
        uts=True,
        pause=["/bin/sleep", "600"],
        userns=USERNS,
    )
    try:
        assert pins.user and pins.net and pins.ipc and pins.uts and pins.pid and pins.pause_pid
        user_ino = os.stat(pins.user).st_ino
        for ns in (pins.net, pins.ipc, pins.uts, pins.pid):
            assert _owner_ino(ns) == user_ino
        assert Path(f"/proc/{pins.pause_pid}/uid_map").read_text().split() == [
            "0",
            "1000000",
            "65536",
        ]
        assert Path(f"/proc/{pins.pause_pid}/gid_map").read_text().split() == [
            "0",
            "2000000",
            "65536",
        ]
        out = subprocess.run(
            ["nsenter", f"--user={pins.user}", f"--uts={pins.uts}", "hostname"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "web-1"
    finally:
        os.kill(pins.pause_pid, 9)
        await pinner.unpin("userns-pod")
    assert pinner.pinned() == set()


async def test_a_failed_user_namespace_pin_leaves_nothing(pinner: NamespacePinner) -> None:
    with pytest.raises(PinError, match="user namespace helper failed"):
        await pinner.pin(
            "broken",
            "h",
            net=True,
            ipc=False,
            uts=False,
            pause=["/nonexistent/pause"],
            userns=USERNS,
        )
    assert pinner.pinned() == set()


def test_allow_traversal(tmp_path: Path) -> None:
    top = tmp_path / "a"
    deep = top / "b" / "c"
    deep.mkdir(parents=True)
    for d in (top, top / "b"):
        d.chmod(0o700)
    changed = files.allow_traversal(deep)
    assert set(changed) >= {top, top / "b"} and deep not in changed  # 0755 already
    assert (top.stat().st_mode & 0o777, (top / "b").stat().st_mode & 0o777) == (0o711, 0o711)
    assert files.allow_traversal(deep) == []
