"""Pod network counters: a pure ``/proc/net/dev`` parser and a reader that enters the pod's
network namespace (on a fresh thread of its own, see ``cri_async.network.netns``).

The per-thread path matters: ``/proc/net`` is ``/proc/self/net``, which is the *main*
thread's namespace, not the calling thread's.
"""

from __future__ import annotations

from cri_async.core.stats import InterfaceStats
from cri_async.network.netns import run_in_netns

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


def read_in_netns(netns_path: str, path: str = NETDEV) -> str:
    """Read ``path`` (a per-thread ``/proc/thread-self/...`` file) inside the network
    namespace at ``netns_path``. Blocks the caller until a fresh thread has done it."""

    def read() -> str:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()

    return run_in_netns(netns_path, read)


def read_netdev_in_netns(netns_path: str) -> str:
    """The content of ``/proc/net/dev`` as seen inside the namespace at ``netns_path``."""
    return read_in_netns(netns_path, NETDEV)
