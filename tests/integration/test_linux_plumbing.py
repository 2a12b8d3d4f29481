"""Pinned namespaces and overlay root filesystems on the real kernel (root needed)."""

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cri_async import linux, rootfs
from cri_async.network.pins import NamespacePinner
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
