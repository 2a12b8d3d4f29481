"""Work inside a pod's network namespace, and the thread it runs on.

Namespaces belong to threads, so anything that enters one runs on a fresh thread of its
own, never on the event loop's thread and never on a pooled one: the thread enters the
namespace, does its work, restores its own namespace and then ends, so even a failed
restore cannot leak a namespace into other work. The thread's own namespace is found at
``/proc/thread-self/ns/net`` (``/proc/1/ns/*`` is not readable here, and ``/proc/self``
is the main thread's).

Port-forward's dial uses this: a socket keeps the namespace it was created in, so a TCP
connection made inside the pod's namespace can be handed to the event loop afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from cri_async import linux

T = TypeVar("T")

OWN_NETNS = "/proc/thread-self/ns/net"
DIAL_TIMEOUT = 10.0
"""Seconds a port-forward connect may take (a SYN to a filtered port is never answered)."""


async def in_fresh_thread(
    fn: Callable[[], T], *, name: str, discard: Callable[[T], object] | None = None
) -> T:
    """Run ``fn`` on a new thread that ends with it; its result here. Cancelling the
    caller does not stop ``fn``: a result that arrives after that goes to ``discard``
    (e.g. closing a socket nobody will use)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(result: T) -> None:
        if not done.cancelled():
            done.set_result(result)
        elif discard is not None:
            discard(result)

    def fail(error: BaseException) -> None:
        if not done.cancelled():
            done.set_exception(error)

    def run() -> None:
        try:
            result = fn()
        except BaseException as e:
            loop.call_soon_threadsafe(fail, e)
        else:
            loop.call_soon_threadsafe(deliver, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


def run_on_fresh_thread(fn: Callable[[], T], *, name: str) -> T:
    """Blocking form of ``in_fresh_thread`` (for callers already on a worker thread)."""
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


@contextlib.contextmanager
def entered(netns_path: str) -> Iterator[None]:
    """The calling thread inside the network namespace at ``netns_path`` for the body,
    then back in its own. Only for a thread of its own (see the module's notes)."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open(OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(target, linux.CLONE_NEWNET)
            try:
                yield
            finally:
                linux.setns(own, linux.CLONE_NEWNET)
        finally:
            os.close(own)
    finally:
        os.close(target)


def run_in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """``fn()`` inside the namespace, on a fresh thread; blocks the caller until done."""

    def inside() -> T:
        with entered(netns_path):
            return fn()

    return run_on_fresh_thread(inside, name="cri-netns")


async def call_in_netns(
    netns_path: str, fn: Callable[[], T], *, discard: Callable[[T], object] | None = None
) -> T:
    """``fn()`` inside the namespace, on a fresh thread, awaited from the event loop."""

    def inside() -> T:
        with entered(netns_path):
            return fn()

    return await in_fresh_thread(inside, name="cri-netns", discard=discard)


def write_sysctl(key: str, value: str) -> None:
    """Set sysctl ``key`` (dotted) as seen by the calling thread: a ``net.*`` one in the
    network namespace it is in (run it through ``call_in_netns``)."""
    with open("/proc/sys/" + key.replace(".", "/"), "w", encoding="ascii") as f:
        f.write(value)


def _connect(port: int, timeout: float) -> socket.socket:
    """``localhost:port``: IPv4 first, then IPv6 (what a pod's server listens on)."""
    error: OSError | None = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except OSError as e:
            sock.close()
            error = error or e
            continue
        sock.setblocking(False)
        return sock
    assert error is not None
    raise error


async def open_connection(
    netns_path: str | None, port: int, *, timeout: float = DIAL_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``localhost:port`` inside the namespace at ``netns_path``
    (None: the host's, for host-network pods). Raises OSError when nothing answers."""
    if netns_path is None:
        sock = await in_fresh_thread(
            lambda: _connect(port, timeout), name="cri-dial", discard=socket.socket.close
        )
    else:
        sock = await call_in_netns(
            netns_path, lambda: _connect(port, timeout), discard=socket.socket.close
        )
    try:
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
