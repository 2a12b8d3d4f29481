"""The one events endpoint of every shim v2 handler of a server.

Shims publish to the ``TTRPC_ADDRESS`` they were started with, and that address is also
hashed into their socket names, so it has to stay the same across restarts of cri-async:
one :class:`EventHub` per server, at ``<state.run_root>/shimv2/events.sock``. It is started
by the first handler that starts or reconnects a shim (before the shim, so no event of its
is published into the void), and each handler subscribes to its own namespace.
"""

from __future__ import annotations

import asyncio
import enum
from pathlib import Path

from .events import EventServer, Subscription

__all__ = ["EventHub"]


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    CLOSED = "closed"


class EventHub:
    """An :class:`EventServer` shared by handlers, started on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server = EventServer(str(path))
        self._lock = asyncio.Lock()
        self._state = _State.NEW

    @property
    def address(self) -> str:
        return str(self.path)

    def subscribe(self, namespace: str) -> Subscription:
        """Events of ``namespace`` from now on (also before the endpoint is started)."""
        return self._server.subscribe(namespace)

    async def start(self) -> None:
        """Listen, unless already listening. Idempotent; refused after :meth:`close`."""
        async with self._lock:
            if self._state is _State.CLOSED:
                raise RuntimeError("the shim events endpoint is closed")
            if self._state is _State.NEW:
                await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
                await self._server.start()
                self._state = _State.SERVING

    async def close(self) -> None:
        """Stop listening and end every subscription. Idempotent."""
        async with self._lock:
            if self._state is not _State.CLOSED:
                self._state = _State.CLOSED
                await self._server.close()
