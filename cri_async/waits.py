"""Waiting on file descriptors and process exits without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence


async def wait_readable(fds: Sequence[int], timeout: float | None) -> set[int]:
    """Wait until any of ``fds`` is readable; the readable ones (empty on timeout)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    ready: set[int] = set()

    def on_ready(fd: int) -> None:
        ready.add(fd)
        if not fut.done():
            fut.set_result(None)

    for fd in fds:
        loop.add_reader(fd, on_ready, fd)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
    return ready


def pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None if it no longer exists."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


async def wait_pid_exit(pid: int, timeout: float | None) -> bool:
    """True once ``pid`` has exited (or does not exist); False on timeout."""
    fd = pidfd(pid)
    if fd is None:
        return True
    try:
        return bool(await wait_readable([fd], timeout))
    finally:
        os.close(fd)
