"""What the shim backend holds in memory for a container's task: its shim, its stdio FIFOs
and where its output goes (the CRI log, and the attach sessions listening).

A task is loaded again from its bundle after a restart of cri-async, so nothing here is
the only copy of anything: the shim knows the task's state, the bundle records the shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cri_async.logs.crilog import Stream
from cri_async.logs.logfile import LogFile

from .shim import Shim
from .stdio import ProcessIO
from .task import ShimClient

__all__ = ["IO_DIR", "Listener", "Task", "TaskOutput"]

log = logging.getLogger(__name__)

IO_DIR = "io"
"""In a container's bundle: the init process's stdio FIFOs."""


class Listener(Protocol):
    """An attach session following a container's output."""

    def write(self, stream: Stream, data: bytes) -> None: ...

    def end(self) -> None:
        """No more output will come."""
        ...


class TaskOutput:
    """A container's output: every chunk goes to the CRI log, then to each listener."""

    def __init__(self, log_file: LogFile) -> None:
        self.log = log_file
        self._listeners: list[Listener] = []
        self.ended = asyncio.Event()
        """Set once the output has ended (the FIFOs reached end of file, or we let go)."""

    def write(self, stream: Stream, data: bytes) -> None:
        self.log.write(stream, data)
        for listener in list(self._listeners):
            try:
                listener.write(stream, data)
            except Exception:  # a broken listener must not stop the container's log
                log.exception("attach listener failed; dropping it")
                self.unlisten(listener)

    def listen(self, listener: Listener) -> None:
        """Follow the output from now on (ended at once if it is over)."""
        if self.ended.is_set():
            listener.end()
        else:
            self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def end(self) -> None:
        """The output is over: flush partial lines to the log and end the listeners."""
        if self.ended.is_set():
            return
        self.log.flush()
        self.ended.set()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.end()


@dataclass(eq=False)
class Task:
    """A container's task as this process knows it."""

    id: str
    bundle: Path
    shim: Shim
    io: ProcessIO
    output: TaskOutput
    gone: bool = False
    """The shim is gone and ``shim delete`` was run: no task API call will work."""

    @property
    def client(self) -> ShimClient:
        return self.shim.client

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the output's end of file, then end the output. The shim
        closes its FIFO ends once everything holding the container's pipes has exited."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.io.wait_eof()
        self.output.end()

    def release(self) -> None:
        """Close our FIFO ends and the log (the FIFOs stay for a later load)."""
        self.io.close()
        self.output.end()
        self.output.log.close()
