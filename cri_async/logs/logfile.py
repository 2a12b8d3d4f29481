"""A container's CRI log file, written by backends that read the container's output
themselves (the fake backend's simulated processes, shim v2 tasks' stdio FIFOs); conmon
writes its own.

Output chunks arrive as ``(Stream, bytes)`` and are cut into CRI records per stream by a
:class:`~cri_async.logs.crilog.LineSplitter`, so where records end depends only on the
bytes. Each chunk's records go to the file in one ``write`` on an ``O_APPEND`` descriptor,
as conmon does: a chunk is at most one pipe read, and appending to the page cache does not
wait for the disk.

ReopenContainerLog (:meth:`LogFile.reopen`): kubelet renames the file to rotate it and
asks for the path to be opened again; records written afterwards go to the new file, and a
line in progress continues there. A write that fails (disk full, file system gone) drops
that chunk and is logged once until a write succeeds again: losing log lines must never
stop the reader, or the container would block on a full pipe.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from cri_async.logs.crilog import DEFAULT_MAX_LINE, LineSplitter, Stream, encode_record

__all__ = ["LogFile"]

log = logging.getLogger(__name__)

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class LogFile:
    """Appends CRI-format records to the log at ``path`` ("" discards everything)."""

    def __init__(
        self,
        path: str,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self._clock = clock
        self._splitters = {s: LineSplitter(s, max_line) for s in Stream}
        self._fd: int | None = None
        self._failing = False
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._fd = os.open(path, _FLAGS, 0o640)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, stream: Stream, data: bytes) -> None:
        """Record ``data`` from ``stream``: complete lines now, a partial line later."""
        if self._fd is not None:
            recs = self._splitters[stream].feed(data, self._clock())
            self._append(b"".join(encode_record(r) for r in recs))

    def flush(self) -> None:
        """Write every partial line held back as a ``P`` record (end of the output)."""
        if self._fd is not None:
            now = self._clock()
            out = b"".join(encode_record(r) for s in self._splitters.values() for r in s.flush(now))
            self._append(out)

    def reopen(self) -> None:
        """Open ``path`` again (after kubelet renamed it). Raises ``OSError`` if it cannot
        be opened; the old file is kept then."""
        if self._fd is None:
            return
        fd = os.open(self.path, _FLAGS, 0o640)
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        """Flush partial lines and close. Idempotent."""
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None

    def _append(self, data: bytes) -> None:
        if not data or self._fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            if not self._failing:
                log.warning("container log %s: dropping output: %s", self.path, e)
            self._failing = True
            return
        self._failing = False
