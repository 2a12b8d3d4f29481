"""/proc/net/dev parsing, and reading it inside a real network namespace (root)."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cri_async.core.stats import InterfaceStats
from cri_async.stats.network import parse_netdev, read_in_netns, read_netdev_in_netns
from tests.support.prereq import need_root, unavailable

from .support import FIXTURES


def test_parse_netdev_fixture() -> None:
    ifaces = parse_netdev((FIXTURES / "netdev-host").read_text())
    assert [i.name for i in ifaces] == ["lo", "ifb0", "ifb1", "eth0"]
    assert ifaces[0] == InterfaceStats(
        name="lo",
        rx_bytes=10_194_283_072,
        rx_errors=0,
        tx_bytes=10_194_283_072,
        tx_errors=0,
        rx_packets=362_041,
        tx_packets=362_041,
    )
    assert ifaces[3] == InterfaceStats(
        name="eth0",
        rx_bytes=799_925_904,
        rx_errors=0,
        tx_bytes=1_324_501,
        tx_errors=0,
        rx_packets=22_388,
        tx_packets=12_725,
    )


def test_parse_netdev_field_positions() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "  eth0: 1000 10 2 3 4 5 6 7 2000 20 8 9 10 11 12 13\n"
        # Old kernels glue a wide byte counter to the colon.
        "veth1:4294967296 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n"
        "broken: 1 2 3\n"
    )
    assert parse_netdev(text) == (
        InterfaceStats("eth0", 1000, 2, 2000, 8, rx_packets=10, rx_dropped=3, tx_packets=20,
                       tx_dropped=9),
        InterfaceStats("veth1", 4_294_967_296, 0, 5, 0, rx_packets=1, tx_packets=1),
    )  # fmt: skip


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def netns() -> Iterator[str]:
    need_root()
    if shutil.which("ip") is None:
        unavailable("needs iproute2's ip")
    name = f"cri-stats-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        unavailable(f"ip netns add: {r.stderr.strip()}")
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_read_netdev_in_fresh_netns_sees_only_lo(netns: str) -> None:
    before = _netns_inode()
    assert os.stat(netns).st_ino != before
    ifaces = parse_netdev(read_netdev_in_netns(netns))
    assert [i.name for i in ifaces] == ["lo"]
    assert _netns_inode() == before


def test_pooled_thread_stays_in_its_netns(netns: str) -> None:
    def in_pool() -> tuple[int, list[str], int]:
        before = _netns_inode()
        names = [i.name for i in parse_netdev(read_netdev_in_netns(netns))]
        return before, names, _netns_inode()

    with ThreadPoolExecutor(max_workers=1) as pool:
        before, names, after = pool.submit(in_pool).result()
        assert names == ["lo"]
        assert before == after
        # The same pooled thread later still sees the host namespace.
        assert pool.submit(_netns_inode).result() == before


async def test_concurrent_reads_from_the_event_loop(netns: str) -> None:
    before = _netns_inode()
    texts = await asyncio.gather(
        *(asyncio.to_thread(read_netdev_in_netns, netns) for _ in range(8))
    )
    assert all([i.name for i in parse_netdev(t)] == ["lo"] for t in texts)
    assert _netns_inode() == before
    assert threading.active_count() < 50


def test_errors_leave_the_namespace_alone(netns: str, tmp_path: os.PathLike[str]) -> None:
    before = _netns_inode()
    with pytest.raises(FileNotFoundError):
        read_netdev_in_netns("/run/netns/does-not-exist")
    # Not a network namespace: setns fails with EINVAL.
    with pytest.raises(OSError, match="Invalid argument") as e:
        read_netdev_in_netns("/proc/thread-self/ns/uts")
    assert e.value.errno == errno.EINVAL
    # A missing file inside the namespace: the restore still happens.
    with pytest.raises(FileNotFoundError):
        read_in_netns(netns, "/proc/thread-self/net/no-such-file")
    assert _netns_inode() == before
