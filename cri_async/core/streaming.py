"""Where Exec/Attach/PortForward sessions land in the runtime: the streaming server's
``StreamBackend`` (``cri_async.streaming.backend``), mapping a container or pod id to its
record and the record to its handler's backend.

The RPC that issued the URL validated the request; a session comes later (up to the
token's minute), so the target is looked up again and must still be running (or ready).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cri_async.core.context import Context
from cri_async.core.errors import FailedPrecondition
from cri_async.core.model import Container, ContainerState, SandboxState
from cri_async.core.ports import OCIRuntime
from cri_async.core.streams import Session, Stdio, StreamStartError


class RuntimeStreams:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _running(self, container_id: str) -> tuple[Container, OCIRuntime]:
        c = self.ctx.containers.peek(container_id)
        if c is None or c.state is not ContainerState.RUNNING:
            raise StreamStartError(f"container {container_id} is not running")
        sandbox = self.ctx.sandboxes.peek(c.sandbox_id)
        if sandbox is None:
            raise StreamStartError(f"the pod sandbox of container {container_id} is gone")
        return c, self.ctx.backend_for(sandbox)

    async def exec(self, container_id: str, cmd: Sequence[str], stdio: Stdio) -> Session:
        c, backend = self._running(container_id)
        return await backend.exec_session(c, cmd, stdio)

    async def attach(self, container_id: str, stdio: Stdio) -> Session:
        c, backend = self._running(container_id)
        return await backend.attach_session(c, stdio)

    async def port_forward(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sandbox = self.ctx.sandboxes.peek(sandbox_id)
        if sandbox is None or sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready")
        return await self.ctx.backend_for(sandbox).port_forward(sandbox, port)
