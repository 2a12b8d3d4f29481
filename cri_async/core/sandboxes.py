"""Pod sandbox lifecycle: run, stop, remove, status, list."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import replace

from cri_async.core import validate
from cri_async.core.containers import ContainerManager
from cri_async.core.context import Context, now_ns
from cri_async.core.errors import FailedPrecondition
from cri_async.core.events import EventType
from cri_async.core.filters import Filter, matches_labels
from cri_async.core.model import Phase, Resources, Sandbox, SandboxConfig, SandboxState

log = logging.getLogger("cri_async.core.sandboxes")


def pod_hostname(config: SandboxConfig) -> str:
    """The pod's host name: the requested one, else the node's (as containerd does; a
    pod name can be longer than a host name may be)."""
    return config.hostname or os.uname().nodename


def sandbox_key(config: SandboxConfig) -> tuple[str, str, str, int]:
    m = config.metadata
    return (m.name, m.namespace, m.uid, m.attempt)


class SandboxManager:
    def __init__(self, ctx: Context, containers: ContainerManager) -> None:
        self.ctx = ctx
        self.containers = containers

    async def run(self, config: SandboxConfig, handler: str) -> str:
        ctx = self.ctx
        m = config.metadata
        validate.pod_name_field(m.name, "pod sandbox metadata.name")
        validate.pod_name_field(m.namespace, "pod sandbox metadata.namespace")
        validate.pod_name_field(m.uid, "pod sandbox metadata.uid")
        validate.key_values(config.labels, config.annotations, "pod sandbox config")
        validate.sandbox_paths(config)
        if config.hostname:
            validate.hostname(config.hostname, "pod sandbox hostname")
        sec = config.security
        validate.group_has_user(
            sec.run_as_group, sec.run_as_user, "", "pod sandbox linux.security_context"
        )
        userns = validate.user_namespace(
            sec.namespaces.userns,
            "pod sandbox linux.security_context.namespace_options.userns_options",
        )
        backend = ctx.backend(handler)
        status = await backend.probe()
        if not status.ready:
            raise FailedPrecondition(
                f"runtime handler {handler!r} is not ready: {status.reason}: {status.message}"
            )
        if userns is not None and not status.features.user_namespaces:
            raise FailedPrecondition(
                f"runtime handler {handler!r} cannot run pods in a user namespace "
                "(namespace_options.userns_options.mode POD); its Status features say "
                "user_namespaces: false"
            )
        key = sandbox_key(config)
        display = f"{m.name}_{m.namespace}_{m.uid}_{m.attempt}"

        async def make() -> str:
            sid = secrets.token_hex(32)
            rec = Sandbox(
                id=sid,
                config=config,
                runtime_handler=handler,
                created_at=now_ns(),
                phase=Phase.CREATING,
            )
            await ctx.sandboxes.put(rec)
            try:
                rec = await backend.create_sandbox(rec)
                rec = await ctx.sandboxes.put(rec.evolve(phase=Phase.LIVE))
            except BaseException:
                await ctx.cleanup(f"roll back pod sandbox {sid}", lambda: self._discard(rec))
                raise
            ctx.sandbox_names.bind(key, sid)
            ctx.track_pod(rec)
            ctx.publish(sid, EventType.CREATED, rec)
            ctx.publish(sid, EventType.STARTED, rec)
            return sid

        return await ctx.sandbox_names.create(key, display, make)

    async def _discard(self, rec: Sandbox) -> None:
        await self.ctx.backend_for(rec).remove_sandbox(rec)
        await self.ctx.sandboxes.delete(rec.id)

    async def stop(self, sandbox_id: str) -> None:
        """Stop a pod. An unknown id is already stopped (kubelet retries stops)."""
        sb = self.ctx.sandboxes.find(validate.require(sandbox_id, "pod_sandbox_id"))
        if sb is None:
            return
        await self.ctx.single_flight("stop-sandbox", sb.id, lambda: self._stop(sb.id))

    async def _stop(self, sandbox_id: str) -> None:
        ctx = self.ctx
        for c in ctx.sandbox_containers(sandbox_id):
            # Pod stop kills its containers outright, as containerd does.
            await self.containers.stop(c.id, 0)
        sb = ctx.sandboxes.get(sandbox_id)
        await ctx.backend_for(sb).stop_sandbox(sb)
        if sb.state is SandboxState.READY:
            sb = await ctx.sandboxes.update(sb.id, lambda r: r.evolve(state=SandboxState.NOTREADY))
            ctx.publish(sb.id, EventType.STOPPED, sb)

    async def remove(self, sandbox_id: str) -> None:
        sb = self.ctx.sandboxes.find(validate.require(sandbox_id, "pod_sandbox_id"))
        if sb is None:
            return
        await self.ctx.single_flight("remove-sandbox", sb.id, lambda: self._remove(sb.id))

    async def _remove(self, sandbox_id: str) -> None:
        ctx = self.ctx
        if ctx.sandboxes.peek(sandbox_id) is None:
            return
        await self._stop(sandbox_id)
        for c in ctx.sandbox_containers(sandbox_id):
            await self.containers.remove(c.id)
        sb = ctx.sandboxes.get(sandbox_id)
        await ctx.backend_for(sb).remove_sandbox(sb)
        await ctx.sandboxes.delete(sb.id)
        ctx.untrack(sb.id)
        ctx.sandbox_names.release(sandbox_key(sb.config), sb.id)
        ctx.publish(sb.id, EventType.DELETED, sb)

    async def update_resources(
        self, sandbox_id: str, overhead: Resources | None, resources: Resources | None
    ) -> None:
        """Apply pod-level resources (the pod total plus its overhead) and record them."""
        sb = self.ctx.sandboxes.get(validate.require(sandbox_id, "pod_sandbox_id"))
        if sb.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sb.id} is not ready")
        backend = self.ctx.backend_for(sb)
        await backend.update_sandbox_resources(
            sb, _with_overhead(resources or Resources(), overhead)
        )
        await self.ctx.sandboxes.update(
            sb.id,
            lambda r: r.evolve(config=replace(r.config, resources=resources, overhead=overhead)),
        )

    def status(self, sandbox_id: str) -> Sandbox:
        return self.ctx.sandboxes.get(validate.require(sandbox_id, "pod_sandbox_id"))

    def list(self, flt: Filter[SandboxState]) -> list[Sandbox]:
        items = self.ctx.sandboxes.live()
        if flt.id:
            sb = self.ctx.sandboxes.match(flt.id)
            items = [sb] if sb is not None else []
        return [
            s
            for s in items
            if (flt.state is None or s.state is flt.state)
            and matches_labels(s.config.labels, flt.labels)
        ]


def _with_overhead(r: Resources, overhead: Resources | None) -> Resources:
    """The pod cgroup holds the containers and the sandbox overhead: add them up."""
    if overhead is None:
        return r

    def add(a: int, b: int) -> int:
        return a + b if a > 0 else 0  # unlimited stays unlimited

    return replace(
        r,
        cpu_shares=add(r.cpu_shares, overhead.cpu_shares),
        cpu_quota=add(r.cpu_quota, overhead.cpu_quota),
        memory_limit_in_bytes=add(r.memory_limit_in_bytes, overhead.memory_limit_in_bytes),
    )
