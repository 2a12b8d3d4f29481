"""Plays a timeline back in real time: a simulated container process."""

from __future__ import annotations

import asyncio
import math
import signal as signals
import time
from collections.abc import Callable

from cri_async.backends.fake.script import Timeline, exit_code_for_signal
from cri_async.core.ports import ExitStatus
from cri_async.logs.crilog import Stream

# Signals whose default action is not to terminate the process.
_HARMLESS = frozenset(
    {signals.SIGCHLD, signals.SIGCONT, signals.SIGURG, signals.SIGWINCH, signals.SIGSTOP}
)


class FakeProcess:
    def __init__(
        self,
        pid: int,
        timeline: Timeline,
        write: Callable[[Stream, bytes], None],
        on_exit: Callable[[ExitStatus], None],
    ) -> None:
        self.pid = pid
        self._timeline = timeline
        self._write = write
        self._on_exit = on_exit
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._play(), name=f"fake-process-{pid}")

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for out in self._timeline.outputs:
            delay = start + out.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._write(Stream(out.stream), out.data)
        if not math.isinf(self._timeline.exit_at):
            delay = start + self._timeline.exit_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._finish(self._timeline.exit_code)
        else:
            await asyncio.Event().wait()

    def _finish(self, code: int) -> None:
        if self.exited.done():
            return
        status = ExitStatus(exit_code=code, finished_at=time.time_ns())
        self._on_exit(status)
        self.exited.set_result(status)

    def kill(self, sig: int) -> None:
        if self.exited.done():
            return
        if sig != signals.SIGKILL and (sig in self._timeline.ignored_signals or sig in _HARMLESS):
            return
        self._task.cancel()
        self._finish(exit_code_for_signal(sig))

    def cancel(self) -> None:
        """Forget the process without an exit (server shutdown: it keeps "running")."""
        self._task.cancel()
