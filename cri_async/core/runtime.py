"""The runtime as a whole: wiring, startup recovery, Version/Status/RuntimeConfig."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from cri_async import CRI_API_VERSION, RUNTIME_NAME, __version__
from cri_async.core.containers import ContainerManager
from cri_async.core.context import Context, Limits, now_ns
from cri_async.core.errors import Unimplemented
from cri_async.core.events import EventBus, EventType
from cri_async.core.images import ImageStore
from cri_async.core.model import Container, ContainerState, NodeNetwork, Phase, Sandbox
from cri_async.core.ports import BackendStatus, OCIRuntime, StateStore, StatsSource
from cri_async.core.sandboxes import SandboxManager, sandbox_key
from cri_async.core.tables import Table

log = logging.getLogger("cri_async.core.runtime")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str = "0.1.0"
    runtime_name: str = RUNTIME_NAME
    runtime_version: str = __version__
    runtime_api_version: str = CRI_API_VERSION


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class RuntimeFeatures:
    """What the runtime as a whole honours (StatusResponse.features)."""

    # Merge and Strict are applied by the spec builder for every handler, and
    # ContainerStatus.user reports the groups the first process got.
    supplemental_groups_policy: bool = True


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    conditions: tuple[Condition, ...]
    handlers: dict[str, BackendStatus]
    info: dict[str, str] = field(default_factory=dict)
    features: RuntimeFeatures = field(default_factory=RuntimeFeatures)


class Runtime:
    def __init__(
        self,
        store: StateStore,
        backends: dict[str, OCIRuntime],
        images: ImageStore,
        *,
        default_handler: str = "",
        cgroup_driver: str = "cgroupfs",
        limits: Limits | None = None,
        event_queue: int = 1024,
        info: dict[str, str] | None = None,
        stats: StatsSource | None = None,
        network_status: Callable[[], tuple[bool, str, str]] | None = None,
        node: NodeNetwork | None = None,
        checkpoint_unsupported: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        if default_handler not in backends:
            raise ValueError(f"default runtime handler {default_handler!r} is not configured")
        self.ctx = Context(
            store=store,
            backends=backends,
            default_handler=default_handler,
            images=images,
            events=EventBus(event_queue),
            sandboxes=Table("pod sandbox", Sandbox, store),
            containers=Table("container", Container, store),
            limits=limits or Limits(),
            stats=stats,
        )
        self.containers = ContainerManager(self.ctx)
        self.sandboxes = SandboxManager(self.ctx, self.containers)
        self.cgroup_driver = cgroup_driver
        self.node = node or NodeNetwork()
        # Why checkpoint/restore cannot work on this node (asked when a client tries).
        self._checkpoint_unsupported = checkpoint_unsupported or _not_implemented
        self._info = info or {}
        # None: no real pod networking configured (the fake backend simulates it).
        self._network_status = network_status
        self.settled: asyncio.Task[None] | None = None
        """Startup's background work (see ``start``); done once it has finished."""

    @property
    def events(self) -> EventBus:
        return self.ctx.events

    # -- startup ---------------------------------------------------------------------
    async def start(self) -> None:
        """What every RPC relies on is done before this returns: the state loaded, names
        bound, and each container recorded as running is checked (from conmon's files, no
        subprocess) and watched, or its exit while we were down recorded; one recorded as
        created is checked for a start a crash cut short. The rest runs in
        the background (``settled``): rolling back objects a crash left half-created and
        sweeping host objects no record owns. Both only touch objects no RPC can reach: a
        half-created record is invisible and holds no name, and the sweep spares every id
        that has a record when it looks (``Table.ids``)."""
        ctx = self.ctx
        await ctx.images.load()
        sandboxes = await ctx.sandboxes.load()
        await ctx.containers.load()
        self.node.pod_cidr = await ctx.store.get_meta("pod_cidr") or ""
        for s in sandboxes:
            if s.phase is Phase.LIVE:
                ctx.sandbox_names.bind(sandbox_key(s.config), s.id)
                ctx.track_pod(s)
        for c in ctx.containers.live():
            ctx.container_names.bind((c.sandbox_id, c.metadata.name, c.metadata.attempt), c.id)
            try:
                if c.state is ContainerState.RUNNING:
                    await self._recover_running(c)
                    ctx.track(c)
                elif c.state is ContainerState.CREATED:
                    await self._recover_created(c)
            except Exception:  # e.g. its handler's binary is gone: the others still serve
                log.exception("cannot recover container %s; left as recorded", c.id)
        if ctx.stats is not None:
            await ctx.stats.start()
        self.settled = ctx.spawn(self._settle(), name="startup-settle")
        log.info(
            "state loaded: %d pod sandboxes, %d containers",
            len(ctx.sandboxes.live()),
            len(ctx.containers.live()),
        )

    async def _settle(self) -> None:
        ctx = self.ctx
        # The first Status asks every handler's probe (a subprocess for some): start them.
        probes = [ctx.spawn(b.probe(), name=f"probe-{b.handler}") for b in ctx.backends.values()]
        for c in [c for c in ctx.containers if c.phase is Phase.CREATING]:
            log.warning("rolling back container %s left half-created by a crash", c.id)
            await ctx.cleanup(f"roll back container {c.id}", partial(self._rollback_container, c))
        for s in [s for s in ctx.sandboxes if s.phase is Phase.CREATING]:
            log.warning("rolling back pod sandbox %s left half-created by a crash", s.id)
            await ctx.cleanup(f"roll back pod sandbox {s.id}", partial(self._rollback_sandbox, s))
        for backend in ctx.backends.values():
            await ctx.cleanup(
                f"reconcile handler {backend.handler!r}",
                partial(backend.reconcile, ctx.sandboxes.ids, ctx.containers.ids),
            )
        if probes:
            await asyncio.wait(probes)
        log.info("startup reconciliation done")

    async def _rollback_sandbox(self, s: Sandbox) -> None:
        await self.ctx.backend_for(s).remove_sandbox(s)
        await self.ctx.sandboxes.delete(s.id)

    async def _rollback_container(self, c: Container) -> None:
        sb = self.ctx.sandboxes.peek(c.sandbox_id)
        if sb is not None:
            await self.ctx.backend_for(sb).delete_container(c)
        await self.ctx.containers.delete(c.id)

    async def _recover_running(self, c: Container) -> None:
        sb = self.ctx.sandboxes.peek(c.sandbox_id)
        if sb is None:
            log.error("container %s belongs to missing pod sandbox %s", c.id, c.sandbox_id)
            return
        status = await self.ctx.backend_for(sb).recover(c)
        if status.exit is not None:
            log.info("container %s exited while cri-async was down", c.id)
            await self.containers.record_exit(c.id, status.exit)
        else:
            self.containers.watch(c.id)

    async def _recover_created(self, c: Container) -> None:
        """A StartContainer that a crash cut short may have started the process: then the
        container runs (or ran), and is recorded and watched as such."""
        ctx = self.ctx
        sb = ctx.sandboxes.peek(c.sandbox_id)
        if sb is None:
            return
        status = await ctx.backend_for(sb).recover(c)
        if not status.started:
            return
        log.warning("container %s was started by a call cut short by a crash", c.id)
        c = await ctx.containers.update(
            c.id,
            lambda r: r.evolve(state=ContainerState.RUNNING, started_at=now_ns(), pid=status.pid),
        )
        ctx.publish(c.id, EventType.STARTED, sb)
        if status.exit is not None:
            await self.containers.record_exit(c.id, status.exit)
        else:
            self.containers.watch(c.id)
            ctx.track(c)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop background work. Containers keep running; their state is on disk."""
        self.ctx.events.close()
        if self.ctx.stats is not None:
            await self.ctx.stats.close()
        if self.settled is not None and not self.settled.done():
            # Startup's rollbacks and sweep are short; let them finish rather than redo
            # them at the next start.
            await asyncio.wait([self.settled], timeout=timeout)
        inflight = [
            *self.ctx.sandbox_names.inflight,
            *self.ctx.container_names.inflight,
        ]
        if inflight:
            await asyncio.wait(inflight, timeout=timeout)
        tasks = list(self.ctx.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for backend in self.ctx.backends.values():
            await backend.close()

    # -- runtime-level RPCs --------------------------------------------------------------
    def version(self) -> VersionInfo:
        return VersionInfo()

    async def status(self, verbose: bool = False) -> RuntimeStatus:
        handlers: dict[str, BackendStatus] = {}
        for name, backend in self.ctx.backends.items():
            try:
                handlers[name] = await asyncio.wait_for(backend.probe(), 5.0)
            except Exception as e:  # a broken handler is reported, never fatal
                handlers[name] = BackendStatus(False, "ProbeFailed", str(e))
        default = handlers[self.ctx.default_handler]
        conditions = (
            Condition("RuntimeReady", default.ready, default.reason, default.message),
            Condition("NetworkReady", *self._network_status())
            if self._network_status is not None
            else Condition("NetworkReady", True),
        )
        info: dict[str, str] = {}
        if verbose:
            info = dict(self._info)
            info["handlers"] = json.dumps(
                {n: {"ready": h.ready, **_why(h), **h.info} for n, h in handlers.items()},
                sort_keys=True,
            )
            info["podCIDR"] = self.node.pod_cidr
        return RuntimeStatus(conditions, handlers, info)

    async def checkpoint(self, what: str) -> None:
        """Checkpoint and restore (CheckpointContainer, CheckpointPod, RestorePod) need
        CRIU, which cri-async does not drive: Unimplemented, saying why."""
        raise Unimplemented(f"{what} needs CRIU: {await self._checkpoint_unsupported()}")

    async def update_runtime_config(self, pod_cidr: str) -> None:
        if pod_cidr and pod_cidr != self.node.pod_cidr:
            await self.ctx.store.set_meta("pod_cidr", pod_cidr)
            self.node.pod_cidr = pod_cidr


def _why(h: BackendStatus) -> dict[str, str]:
    """A handler that is not ready says why (``crictl info`` shows it)."""
    return {} if h.ready else {"reason": f"{h.reason}: {h.message}" if h.message else h.reason}


async def _not_implemented() -> str:
    return "cri-async does not implement checkpointing"
