"""Container lifecycle: create, start, stop, remove, status, exec, updates, exit watching."""

from __future__ import annotations

import asyncio
import logging
import os.path
import secrets
import signal as signals
from collections.abc import Sequence

from cri_async.core import validate
from cri_async.core.context import Context, now_ns
from cri_async.core.errors import FailedPrecondition, InvalidArgument, NotFound
from cri_async.core.events import EventType
from cri_async.core.filters import Filter, matches_labels
from cri_async.core.model import (
    Container,
    ContainerConfig,
    ContainerState,
    ContainerUser,
    NamespaceMode,
    Phase,
    Resources,
    Sandbox,
    SandboxState,
)
from cri_async.core.ports import ExecResult, ExitStatus, StartError

log = logging.getLogger("cri_async.core.containers")

EXIT_START_FAILED = 128  # what containerd reports for a container whose start failed


def reason_for(status: ExitStatus) -> str:
    if status.reason:
        return status.reason
    return "Completed" if status.exit_code == 0 else "Error"


def stop_signal_number(name: str) -> int:
    name = name.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signals, name))
    except AttributeError:
        if name.startswith("SIGRTMIN+") or name.startswith("SIGRTMAX-"):
            base = signals.SIGRTMIN if name.startswith("SIGRTMIN") else signals.SIGRTMAX
            off = int(name[9:])
            return int(base + off if name.startswith("SIGRTMIN") else base - off)
        raise InvalidArgument(f"unknown stop signal {name!r}") from None


class ContainerManager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._exited: dict[str, asyncio.Event] = {}
        self._starting: set[str] = set()

    # -- create --------------------------------------------------------------------
    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        ctx = self.ctx
        validate.name_field(config.metadata.name, "container metadata.name")
        validate.require(config.image.image, "container image")
        validate.key_values(config.labels, config.annotations, "container config")
        if config.stop_signal:
            stop_signal_number(config.stop_signal)
        sec = config.security
        validate.group_has_user(
            sec.run_as_group,
            sec.run_as_user,
            sec.run_as_username,
            "container linux.security_context",
        )
        sandbox = ctx.sandboxes.get(validate.require(sandbox_id, "pod_sandbox_id"))
        _check_user_namespace(sandbox, config)
        validate.container_config(config, sandbox.config.log_directory)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(
                f"pod sandbox {sandbox.id} is not ready; cannot create container "
                f"{config.metadata.name!r} in it"
            )
        image = ctx.images.get(config.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found; pull it first")
        pid_target = self._pid_target(sandbox.id, config)
        key = (sandbox.id, config.metadata.name, config.metadata.attempt)
        display = f"{config.metadata.name}_{sandbox.metadata.name}_{config.metadata.attempt}"
        backend = ctx.backend_for(sandbox)

        async def make() -> str:
            cid = secrets.token_hex(32)
            log_path = config.log_path
            if log_path and sandbox.config.log_directory and not os.path.isabs(log_path):
                log_path = os.path.join(sandbox.config.log_directory, log_path)
            rec = Container(
                id=cid,
                sandbox_id=sandbox.id,
                config=config,
                image_id=image.id,
                image_ref=image.repo_digests[0] if image.repo_digests else image.id,
                created_at=now_ns(),
                phase=Phase.CREATING,
                log_path=log_path,
                resources=config.resources,
                user=_user(config, image.uid),
            )
            await ctx.containers.put(rec)
            try:
                rec = await backend.create_container(sandbox, rec, image, pid_target=pid_target)
                rec = await ctx.containers.put(rec.evolve(phase=Phase.LIVE))
            except BaseException:
                await ctx.cleanup(f"roll back container {cid}", lambda: self._discard(rec))
                raise
            ctx.container_names.bind(key, cid)
            ctx.publish(cid, EventType.CREATED, sandbox)
            return cid

        return await ctx.container_names.create(key, display, make)

    def _pid_target(self, sandbox_id: str, config: ContainerConfig) -> Container | None:
        """The container whose PID namespace a container with PID mode TARGET joins: a
        running container of the same pod."""
        ns = config.security.namespaces
        if ns.pid is not NamespaceMode.TARGET:
            return None
        target_id = validate.require(ns.target_id, "namespace_options.target_id")
        target = self.ctx.containers.find(target_id)
        if target is None or target.sandbox_id != sandbox_id:
            raise NotFound(f"target container {target_id!r} not found in pod {sandbox_id}")
        if target.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"target container {target.id} is not running")
        return target

    async def _discard(self, rec: Container) -> None:
        await self.ctx.backend_for(self.ctx.sandboxes.get(rec.sandbox_id)).delete_container(rec)
        await self.ctx.containers.delete(rec.id)

    # -- start ---------------------------------------------------------------------
    async def start(self, container_id: str) -> None:
        ctx = self.ctx
        c = ctx.containers.get(container_id)
        if c.state is not ContainerState.CREATED or c.id in self._starting:
            raise FailedPrecondition(
                f"container {c.id} is {c.state.value}; only a created container can be started"
            )
        sandbox = ctx.sandboxes.get(c.sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} of container {c.id} is not ready")
        backend = ctx.backend_for(sandbox)
        self._starting.add(c.id)
        try:
            try:
                pid = await backend.start_container(c)
            except StartError as e:
                why = str(e)
                await ctx.containers.update(
                    c.id,
                    lambda r: r.evolve(
                        state=ContainerState.EXITED,
                        finished_at=now_ns(),
                        exit_code=EXIT_START_FAILED,
                        reason="StartError",
                        message=why,
                    ),
                )
                ctx.publish(c.id, EventType.STOPPED, sandbox)
                raise FailedPrecondition(f"failed to start container {c.id}: {why}") from None
            self._exited[c.id] = asyncio.Event()
            await ctx.containers.update(
                c.id,
                lambda r: r.evolve(state=ContainerState.RUNNING, started_at=now_ns(), pid=pid),
            )
        finally:
            self._starting.discard(c.id)
        self.watch(c.id)
        ctx.track(c)
        ctx.publish(c.id, EventType.STARTED, sandbox)

    def watch(self, container_id: str) -> None:
        """Follow a running container until its process exits, then record the exit."""
        self._exited.setdefault(container_id, asyncio.Event())
        self.ctx.spawn(self._watch(container_id), name=f"watch-{container_id[:12]}")

    async def _watch(self, container_id: str) -> None:
        ctx = self.ctx
        c = ctx.containers.peek(container_id)
        sandbox = ctx.sandboxes.peek(c.sandbox_id) if c else None
        if c is None or sandbox is None:
            return
        try:
            status = await ctx.backend_for(sandbox).wait(c)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("lost track of container %s", container_id)
            status = ExitStatus(255, now_ns(), reason="Unknown", message=f"lost track: {e}")
        await self.record_exit(container_id, status)

    async def record_exit(self, container_id: str, status: ExitStatus) -> None:
        ctx = self.ctx
        if ctx.containers.peek(container_id) is None:
            return
        await ctx.containers.update(
            container_id,
            lambda r: r.evolve(
                state=ContainerState.EXITED,
                finished_at=status.finished_at,
                exit_code=status.exit_code,
                reason=reason_for(status),
                message=status.message,
            ),
        )
        ev = self._exited.get(container_id)
        if ev is not None:
            ev.set()
        c = ctx.containers.peek(container_id)
        sandbox = ctx.sandboxes.peek(c.sandbox_id) if c else None
        ctx.publish(container_id, EventType.STOPPED, sandbox)

    # -- stop ----------------------------------------------------------------------
    async def stop(self, container_id: str, timeout: float) -> None:
        """Stop a running container. An unknown id is already stopped: kubelet retries
        stops of containers a previous attempt (or a crash) already removed."""
        c = self.ctx.containers.find(validate.require(container_id, "container_id"))
        if c is None:
            return
        await self._stop(c, timeout)

    async def _stop(self, c: Container, timeout: float) -> None:
        if c.state is not ContainerState.RUNNING:
            return
        ctx = self.ctx
        backend = ctx.backend_for(ctx.sandboxes.get(c.sandbox_id))
        exited = self._exited.setdefault(c.id, asyncio.Event())
        if timeout > 0:
            image = ctx.images.get(c.config.image)
            name = c.config.stop_signal or (image.stop_signal if image else "") or "SIGTERM"
            await backend.kill(c, stop_signal_number(name))
            try:
                await asyncio.wait_for(exited.wait(), timeout)
                return
            except TimeoutError:
                log.info("container %s did not stop within %ss; killing it", c.id, timeout)
        await backend.kill(c, signals.SIGKILL)
        try:
            await asyncio.wait_for(exited.wait(), ctx.limits.kill_timeout)
        except TimeoutError:
            raise FailedPrecondition(
                f"container {c.id} did not exit {ctx.limits.kill_timeout}s after SIGKILL"
            ) from None

    # -- remove --------------------------------------------------------------------
    async def remove(self, container_id: str) -> None:
        c = self.ctx.containers.find(validate.require(container_id, "container_id"))
        if c is None:
            return
        await self.ctx.single_flight("remove-container", c.id, lambda: self._remove(c.id))

    async def _remove(self, container_id: str) -> None:
        ctx = self.ctx
        c = ctx.containers.peek(container_id)
        if c is None:
            return
        await self._stop(c, 0)
        sandbox = ctx.sandboxes.peek(c.sandbox_id)
        if sandbox is not None:
            await ctx.backend_for(sandbox).delete_container(c)
        await ctx.containers.delete(c.id)
        ctx.untrack(c.id)
        ctx.container_names.release((c.sandbox_id, c.metadata.name, c.metadata.attempt), c.id)
        self._exited.pop(c.id, None)
        ctx.publish(c.id, EventType.DELETED, sandbox)

    # -- queries -------------------------------------------------------------------
    def status(self, container_id: str) -> Container:
        return self.ctx.containers.get(validate.require(container_id, "container_id"))

    def list(self, flt: Filter[ContainerState]) -> list[Container]:
        items = self.ctx.containers.live()
        if flt.id:
            c = self.ctx.containers.match(flt.id)
            items = [c] if c is not None else []
        sandbox_id = flt.sandbox_id
        if sandbox_id:
            sb = self.ctx.sandboxes.match(sandbox_id)
            sandbox_id = sb.id if sb is not None else sandbox_id
        return [
            c
            for c in items
            if (flt.state is None or c.state is flt.state)
            and (not sandbox_id or c.sandbox_id == sandbox_id)
            and matches_labels(c.config.labels, flt.labels)
        ]

    # -- in-container operations ---------------------------------------------------
    async def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: float | None
    ) -> ExecResult:
        validate.command(cmd, "cmd")
        c = self.ctx.containers.get(validate.require(container_id, "container_id"))
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is {c.state.value}, not running")
        backend = self.ctx.backend_for(self.ctx.sandboxes.get(c.sandbox_id))
        return await backend.exec_sync(c, cmd, timeout, self.ctx.limits.exec_output_limit)

    async def update_resources(
        self, container_id: str, resources: Resources, annotations: dict[str, str]
    ) -> None:
        c = self.ctx.containers.get(validate.require(container_id, "container_id"))
        if c.state not in (ContainerState.CREATED, ContainerState.RUNNING):
            raise FailedPrecondition(f"container {c.id} is {c.state.value}; cannot update it")
        backend = self.ctx.backend_for(self.ctx.sandboxes.get(c.sandbox_id))
        await backend.update_resources(c, resources)
        await self.ctx.containers.update(c.id, lambda r: r.evolve(resources=resources))

    async def reopen_log(self, container_id: str) -> None:
        c = self.ctx.containers.get(validate.require(container_id, "container_id"))
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running")
        await self.ctx.backend_for(self.ctx.sandboxes.get(c.sandbox_id)).reopen_log(c)


def _check_user_namespace(sandbox: Sandbox, config: ContainerConfig) -> None:
    """A container's user namespace options, if given, are its pod's (containers of a pod
    share the pod's user namespace)."""
    what = "container linux.security_context.namespace_options.userns_options"
    own = validate.user_namespace(config.security.namespaces.userns, what)
    pod = sandbox.config.security.namespaces.userns
    pod_mode = pod.mode if pod is not None else NamespaceMode.NODE
    if config.security.namespaces.userns is not None and (
        own != pod if own is not None else pod_mode is not NamespaceMode.NODE
    ):
        raise InvalidArgument(f"{what} differ from the pod sandbox's")


def _user(config: ContainerConfig, image_uid: int | None) -> ContainerUser | None:
    sec = config.security
    uid = sec.run_as_user if sec.run_as_user is not None else image_uid
    if uid is None:
        return None
    gid = sec.run_as_group if sec.run_as_group is not None else 0
    return ContainerUser(uid=uid, gid=gid, supplemental_groups=sec.supplemental_groups)
