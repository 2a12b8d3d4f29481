"""The port the streaming server needs from a runtime: run a command in a container, attach
to a container's stdio, dial a port inside a pod. The session shapes are the core's
(``cri_async.core.streams``), since backends produce them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from cri_async.core.streams import (
    OutputChunk,
    OutputStream,
    Session,
    Stdio,
    StreamStartError,
    TerminalSize,
)

__all__ = [
    "OutputChunk",
    "OutputStream",
    "Session",
    "Stdio",
    "StreamBackend",
    "StreamStartError",
    "TerminalSize",
]


class StreamBackend(Protocol):
    async def exec(self, container_id: str, cmd: Sequence[str], stdio: Stdio) -> Session:
        """Start ``cmd`` in the running container. Raises StreamStartError."""
        ...

    async def attach(self, container_id: str, stdio: Stdio) -> Session:
        """Connect to the running container's stdio (output written from now on)."""
        ...

    async def port_forward(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``localhost:port`` inside the pod's network namespace.
        Raises OSError (e.g. ConnectionRefusedError) when it cannot connect."""
        ...
