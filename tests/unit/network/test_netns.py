"""Work in another network namespace on a fresh thread: the caller's namespace never
changes, results that come too late are discarded, and the port-forward dial connects
inside the namespace (IPv4, else IPv6) or reports why not."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from cri_async.network import netns
from tests.support.prereq import need_root, unavailable


def own_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def pod_netns() -> Iterator[str]:
    need_root()
    if shutil.which("ip") is None:
        unavailable("needs iproute2's ip")
    name = f"cri-netns-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_in_fresh_thread_runs_elsewhere_and_returns() -> None:
    loop_thread = threading.get_ident()
    assert await netns.in_fresh_thread(threading.get_ident, name="t") != loop_thread


async def test_a_failure_comes_back_as_the_exception() -> None:
    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await netns.in_fresh_thread(boom, name="t")


async def test_a_result_after_cancellation_is_discarded() -> None:
    release = threading.Event()
    discarded: list[int] = []
    done = asyncio.Event()

    def slow() -> int:
        release.wait(30)
        return 7

    def discard(value: int) -> None:
        discarded.append(value)
        done.set()

    task = asyncio.create_task(netns.in_fresh_thread(slow, name="t", discard=discard))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await asyncio.wait_for(done.wait(), 30)
    assert discarded == [7]


async def test_call_in_netns_leaves_the_loop_thread_alone(pod_netns: str) -> None:
    before = own_inode()
    inside = await netns.call_in_netns(pod_netns, own_inode)
    assert inside == os.stat(pod_netns).st_ino != before
    assert own_inode() == before


def test_run_in_netns_from_a_pooled_thread(pod_netns: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        before = pool.submit(own_inode).result()
        inside = pool.submit(netns.run_in_netns, pod_netns, own_inode).result()
        assert inside == os.stat(pod_netns).st_ino
        assert pool.submit(own_inode).result() == before


async def test_dial_reaches_a_server_inside_only(pod_netns: str) -> None:
    def listen(family: int, host: str) -> socket.socket:
        s = socket.socket(family)
        s.bind((host, 0))
        s.listen()
        return s

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = await netns.call_in_netns(pod_netns, lambda f=family, h=host: listen(f, h))
        port = sock.getsockname()[1]
        server = await asyncio.start_server(lambda r, w: (w.write(b"inside"), w.close()), sock=sock)
        try:
            reader, writer = await netns.open_connection(pod_netns, port)
            assert await reader.read() == b"inside"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        # The host has no such server: the same port is refused there.
        with pytest.raises(ConnectionRefusedError):
            await netns.open_connection(None, port)


async def test_dial_to_a_closed_port_is_refused(pod_netns: str) -> None:
    with pytest.raises(ConnectionRefusedError):
        await netns.open_connection(pod_netns, 9)
    with pytest.raises(FileNotFoundError):
        await netns.open_connection("/run/netns/no-such-namespace", 80)


async def test_a_net_sysctl_is_set_in_the_namespace_only(pod_netns: str) -> None:
    key = "net.ipv4.ip_unprivileged_port_start"
    path = "/proc/sys/net/ipv4/ip_unprivileged_port_start"

    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    host = read()
    await netns.call_in_netns(pod_netns, lambda: netns.write_sysctl(key, "0"))
    assert await netns.call_in_netns(pod_netns, read) == "0"
    assert read() == host
