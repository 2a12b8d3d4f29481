"""The stream shapes the core's runtime port carries (exec and attach sessions): what a
backend hands the streaming server for one exec'd process or one attach.

The shapes follow what conmon offers, so a conmon-based backend maps one call to one
primitive:

- ``Session.write_stdin``   raw bytes on the attach socket (SOCK_SEQPACKET, no prefix)
- ``Session.read_output``   attach socket packets; the 1-byte prefix 2 = stdout, 3 = stderr
- ``Session.close_stdin``   ``shutdown(SHUT_WR)`` on the attach socket: conmon closes the
                            process's stdin (unless it runs with --leave-stdin-open)
- ``Session.resize``        ``"1 <rows> <cols>\\n"`` into the ``ctl`` fifo
- ``Session.wait``          the exit code from the exit file / sync pipe
- ``Session.close``         close the socket; for exec also kill what still runs

and a plain host process maps onto pipes (or a pty for ``tty``) and ``TIOCSWINSZ``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class OutputStream(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True, slots=True)
class Stdio:
    """Which standard streams a session carries. With ``tty`` there is no stderr: the
    terminal merges both outputs onto stdout."""

    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: OutputStream
    data: bytes


@dataclass(frozen=True, slots=True)
class TerminalSize:
    width: int  # columns
    height: int  # rows


class StreamStartError(Exception):
    """The command or the attach could not start; the message goes to the client."""


class Session(Protocol):
    """One exec'd process or one attach to a container, owned by one client connection."""

    async def write_stdin(self, data: bytes) -> None:
        """Deliver input; may wait while the process is not reading (back-pressure)."""
        ...

    async def close_stdin(self) -> None:
        """The process sees end of input. Idempotent."""
        ...

    async def read_output(self) -> OutputChunk | None:
        """The next chunk of output; None once there will be no more (the process exited
        and its output is drained, or the attach ended)."""
        ...

    async def resize(self, size: TerminalSize) -> None:
        """Set the terminal size (tty sessions; ignored otherwise)."""
        ...

    async def wait(self) -> int:
        """The exit code: of the command (exec) or of the container (attach)."""
        ...

    async def close(self) -> None:
        """Release everything the session holds. For exec, a process still running is
        killed and reaped; for attach, the container keeps running. Idempotent."""
        ...
