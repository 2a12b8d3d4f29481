"""A TCP connection to ``localhost:port`` inside a pod's network namespace (port
forwarding), without blocking the event loop.

A socket belongs for life to the network namespace it was created in, and ``setns``
changes only the calling thread's. So the socket is made on a fresh thread that enters the
pod's namespace and then ends (it is never a pooled thread, which would keep the
namespace), and the connect runs on the event loop. IPv4's loopback is tried first, then
IPv6's, as containerd does; ``netns=None`` dials the host's (host-network pods).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from cri_async.stats.network import CLONE_NEWNET, setns

__all__ = ["dial", "in_netns"]

T = TypeVar("T")

LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread inside the network namespace at ``netns``; blocks the
    caller until it is done (call it through ``asyncio.to_thread``)."""
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=work, name="cri-netns-dial", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


async def dial(
    netns: str | None, port: int, *, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``localhost:port`` in ``netns``. Raises ``OSError`` (the IPv4 attempt's,
    e.g. ``ConnectionRefusedError``) when neither loopback answers."""
    loop = asyncio.get_running_loop()
    first: OSError | None = None
    for family, address in LOOPBACKS:
        try:
            if netns is None:
                sock = _socket(family)
            else:
                sock = await asyncio.to_thread(in_netns, netns, lambda f=family: _socket(f))
        except OSError as e:  # e.g. no IPv6 in that namespace
            first = first or e
            continue
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (address, port))
        except OSError as e:  # TimeoutError included
            sock.close()
            first = first or e
            continue
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)
    assert first is not None
    raise first
