"""Pod network counters: a pure ``/proc/net/dev`` parser and a reader that enters the pod's
network namespace in a short-lived dedicated thread.

``read_netdev_in_netns`` never runs on a pooled thread: it starts its own thread, which saves
its namespace (``/proc/thread-self/ns/net``; ``/proc/1/ns/*`` is not readable
here), ``setns``-es into the pod's, reads ``/proc/thread-self/net/dev`` and restores before it
exits. The per-thread path matters: ``/proc/net`` is ``/proc/self/net``, which is the *main*
thread's namespace, not the calling thread's.
"""

from __future__ import annotations

import ctypes
import os
import threading
from functools import cache

from cri_async.core.stats import InterfaceStats

CLONE_NEWNET = 0x40000000
OWN_NETNS = "/proc/thread-self/ns/net"
NETDEV = "/proc/thread-self/net/dev"


def parse_netdev(text: str) -> tuple[InterfaceStats, ...]:
    """``/proc/net/dev``: two header lines, then ``name: 8 receive + 8 transmit counters``
    (bytes packets errs drop fifo frame compressed multicast | bytes packets errs drop fifo
    colls carrier compressed). Interfaces keep the kernel's order."""
    out = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue
        fields = rest.split()
        if len(fields) < 16:
            continue
        try:
            v = [int(f) for f in fields[:16]]
        except ValueError:
            continue
        out.append(
            InterfaceStats(
                name=name.strip(),
                rx_bytes=v[0],
                rx_packets=v[1],
                rx_errors=v[2],
                rx_dropped=v[3],
                tx_bytes=v[8],
                tx_packets=v[9],
                tx_errors=v[10],
                tx_dropped=v[11],
            )
        )
    return tuple(out)


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int) -> None:
    """``os.setns`` (Python >= 3.12) or libc's ``setns`` through ctypes (3.11)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    if _libc().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _read_in_netns(netns_path: str, path: str) -> str:
    """Runs on a dedicated thread. Raises if the namespace cannot be entered or left."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open(OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    return f.read()
            finally:
                setns(own, CLONE_NEWNET)
        finally:
            os.close(own)
    finally:
        os.close(target)


def read_in_netns(netns_path: str, path: str = NETDEV) -> str:
    """Read ``path`` (a per-thread ``/proc/thread-self/...`` file) inside the network
    namespace at ``netns_path``. Blocks the caller until a fresh thread has done it; the
    thread ends afterwards, so even a failed restore cannot leak a namespace into a pool."""
    result: list[str] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(_read_in_netns(netns_path, path))
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=work, name="cri-stats-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def read_netdev_in_netns(netns_path: str) -> str:
    """The content of ``/proc/net/dev`` as seen inside the namespace at ``netns_path``."""
    return read_in_netns(netns_path, NETDEV)
