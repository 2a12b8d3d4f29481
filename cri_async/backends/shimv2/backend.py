"""The shim v2 backend: a RuntimeClass handler whose containers are tasks of a containerd
shim (Kata, gVisor's shim, runwasi, containerd-shim-runc-v2), driven over ttrpc.

A pod is its host side (``PodHost``: pinned namespaces, pod files, network, cgroup) and,
for shims that keep a pod in a sandbox of their own (``sandbox_task``: Kata's VM, gVisor),
an infra task named by the pod id, annotated ``container-type=sandbox`` and started
first; the pod's containers carry its sandbox id, so grouping shims (runc's, Kata's)
serve the whole pod from one shim.

A container is a bundle (``BundleLayout``) named by the task id: the overlay rootfs
pre-mounted with the new mount API (so no 4 KiB option limit applies) and config.json with
``root.path = "rootfs"``; its task is created with no rootfs mounts and with stdio FIFOs
under the bundle, whose output we read into the CRI log and to attach sessions
(``TaskSet`` does the tasks, ``sessions`` the execs and attaches).

After a restart of cri-async each task is loaded from its bundle (``bootstrap.json``), its
FIFOs are reopened and its Wait resumed. While nobody reads them, a container's output
waits in the FIFOs' pipe buffers (64 KiB each) and the container blocks writing beyond
that, as it does under containerd while containerd is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import signal as signals
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cri_async import cgroupfs
from cri_async.backends.bundles import BundleLayout
from cri_async.backends.features import runtime_features
from cri_async.backends.infra import find_infra_binary, infra_spec, install_rootfs
from cri_async.backends.ocicli import RuntimeCLI
from cri_async.core.errors import FailedPrecondition, Internal
from cri_async.core.model import Container, ContainerState, Image, Resources, Sandbox
from cri_async.core.ports import (
    BackendStatus,
    ExecResult,
    ExitStatus,
    HandlerFeatures,
    ProcessStatus,
    StartError,
)
from cri_async.core.streams import Session, Stdio, StreamStartError
from cri_async.network import netns
from cri_async.oci import spec as oci
from cri_async.oci.errors import SpecError
from cri_async.pods.host import PodHost, cgroup_parent
from cri_async.stats.cgroupstats import CgroupStats
from cri_async.ttrpc.errors import ConnectionClosed, NotFoundError, TTRPCError

from .bootstrap import ShimNotFound, resolve_binary
from .hub import EventHub
from .sessions import AttachSession, ExecSession, exec_sync
from .settings import ShimSettings
from .shim import Shim, ShimGone
from .taskset import TaskSet

__all__ = ["ShimBackend", "ShimStatsSource"]

log = logging.getLogger(__name__)

EXEC_DIR = "exec"
"""In a container's bundle: one directory of FIFOs per running exec."""


class ShimBackend:
    """One RuntimeClass handler backed by a containerd shim (see the module's notes)."""

    def __init__(
        self,
        handler: str,
        *,
        settings: ShimSettings,
        root: Path,
        hub: EventHub,
        pods: PodHost,
        layout: BundleLayout,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.root = root
        self.hub = hub
        self.pods = pods
        self.layout = layout
        self.tasks = TaskSet(handler, settings, hub, layout)
        self._infra: tuple[str, tuple[str, ...]] | None = None
        self._infra_shims: dict[str, Shim] = {}
        self._features: tuple[str, HandlerFeatures] | None = None

    # -- readiness -------------------------------------------------------------------
    @property
    def infra_rootfs(self) -> Path:
        return self.root / "infra"

    async def probe(self) -> BackendStatus:
        s = self.settings
        try:
            shim = resolve_binary(s.runtime_type)
        except (ShimNotFound, ValueError) as e:
            return BackendStatus(False, "BinaryMissing", f"{e} (handler {self.handler!r})")
        runc = shutil.which(s.runc_binary) if s.runc_binary else None
        if s.runc_binary and runc is None:
            return BackendStatus(
                False, "BinaryMissing", f"{s.runc_binary} not found (handler {self.handler!r})"
            )
        if s.sandbox_task:
            if self._infra is None:
                self._infra = await asyncio.to_thread(find_infra_binary, s.infra_binary)
            if self._infra is None:
                return BackendStatus(
                    False,
                    "InfraBinaryMissing",
                    f"no static pause binary for pod infra tasks (handler {self.handler!r}): "
                    f"{s.infra_binary or 'install catatonit or busybox-static'}",
                )
        try:
            await asyncio.to_thread(self._prepare_files)
        except OSError as e:
            return BackendStatus(False, "SetupFailed", f"shim handler {self.handler!r}: {e}")
        if runc is not None and (self._features is None or self._features[0] != runc):
            feats = await RuntimeCLI(runc, str(self.root / "runc")).features()
            # The shim's runc gets no idmapped root filesystem from us: no user namespaces.
            found = runtime_features("runc", feats, "")
            self._features = (runc, replace(found, user_namespaces=False))
        return BackendStatus(
            True,
            features=self._features[1] if self._features else HandlerFeatures(),
            info={
                "backend": "shimv2",
                "runtime_type": s.runtime_type,
                "shim": shim,
                "namespace": s.namespace,
                "root": str(self.root),
            },
        )

    def _prepare_files(self) -> None:
        self.layout.make_dirs()
        self.pods.root.mkdir(parents=True, exist_ok=True)
        if self._infra is not None:
            install_rootfs(self.infra_rootfs, self._infra[0])

    # -- pods ------------------------------------------------------------------------
    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        if self.settings.sandbox_task and self._infra is None:
            status = await self.probe()
            if not status.ready:
                raise FailedPrecondition(status.message)
        sandbox = await self.pods.create(sandbox)
        if not self.settings.sandbox_task:
            return sandbox
        try:
            pid = await self._start_infra(sandbox)
        except BaseException:
            await asyncio.shield(self.remove_sandbox(sandbox))
            raise
        info = dict(sandbox.backend_info, infraTask=sandbox.id, infraPid=str(pid))
        return sandbox.evolve(backend_info=info)

    async def _start_infra(self, sandbox: Sandbox) -> int:
        """Create and start the pod's infra task; its shim is kept (its log is read) until
        the pod is removed."""
        assert self._infra is not None
        sid = sandbox.id
        bundle = self.layout.bundle(sid)
        info = sandbox.backend_info
        spec = infra_spec(
            sandbox,
            rootfs=str(self.infra_rootfs),
            args=self._infra[1],
            netns=info.get("netns") or None,
            hostname=info.get("hostname", ""),
            cgroups_path=f"{cgroup_parent(sandbox)}/{sid}",
            oom_score_adj=self.layout.host.min_oom_score_adj,
        )
        await asyncio.to_thread(bundle.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
        shim = await self.tasks.start_shim(sid, bundle)
        self._infra_shims[sid] = shim
        try:
            await shim.client.create(sid, str(bundle), options=self.settings.options)
            return await shim.client.start(sid)
        except TTRPCError as e:
            raise Internal(f"the pod's infra task did not start: {e.message}") from None

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        """Kill the infra task (the pod's containers were stopped before)."""
        sid = sandbox.id
        if sandbox.backend_info.get("infraTask"):
            shim = self._infra_shims.get(sid) or await self.tasks.load_shim(
                sid, self.layout.bundle(sid)
            )
            if shim is not None:
                self._infra_shims[sid] = shim
                try:
                    await self.tasks.stop(shim.client, sid)
                except ConnectionClosed:
                    await self.tasks.delete_dead(sid, self.layout.bundle(sid))
        await self.pods.stop(sandbox)

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        sid = sandbox.id
        if self.settings.sandbox_task or sandbox.backend_info.get("infraTask"):
            shim = self._infra_shims.pop(sid, None)
            if shim is not None:
                await shim.close()  # remove_orphan loads it again and shuts it down
            await self.tasks.remove_orphan(sid, self.layout.bundle(sid))
            await self.layout.remove(sid)
            await asyncio.to_thread(cgroupfs.remove, f"{cgroup_parent(sandbox)}/{sid}")
        await self.pods.remove(sandbox)

    async def update_sandbox_resources(self, sandbox: Sandbox, resources: Resources) -> None:
        await self.pods.update_resources(sandbox, resources)

    # -- containers ------------------------------------------------------------------
    async def create_container(
        self,
        sandbox: Sandbox,
        container: Container,
        image: Image,
        *,
        pid_target: Container | None = None,
    ) -> Container:
        if self.settings.sandbox_task and not sandbox.backend_info.get("infraTask"):
            raise FailedPrecondition(f"pod sandbox {sandbox.id} has no infra task")

        def adjust(spec: dict[str, Any]) -> None:
            spec["root"]["path"] = "rootfs"  # the shim resolves it in the bundle

        try:
            ready = await self.layout.prepare(
                sandbox,
                container,
                image,
                pod=self.pods.paths(sandbox),
                cgroups_path=f"{cgroup_parent(sandbox)}/{container.id}",
                pid_target=pid_target,
                adjust=adjust,
            )
            task, pid = await self.tasks.create(container, ready.bundle)
        except BaseException:
            await asyncio.shield(self.delete_container(container))
            raise
        info = dict(ready.backend_info, shimAddress=task.shim.address)
        return container.evolve(pid=pid, backend_info=info, user=ready.container_user)

    async def start_container(self, container: Container) -> int:
        try:
            task = await self.tasks.get(container)
            return await task.client.start(container.id)
        except (ShimGone, FileNotFoundError) as e:
            raise StartError(str(e)) from None
        except TTRPCError as e:
            raise StartError(e.message) from None

    async def wait(self, container: Container) -> ExitStatus:
        return await self.tasks.wait(container)

    async def kill(self, container: Container, signal: int) -> None:
        try:
            task = await self.tasks.get(container)
        except (ShimGone, FileNotFoundError):
            return  # wait() reports the end
        if task.gone:
            return
        try:
            await task.client.kill(container.id, signal, all=signal == signals.SIGKILL)
        except (NotFoundError, ConnectionClosed):
            pass  # already exited, or the shim is gone (wait() sees to it)
        except TTRPCError as e:
            raise Internal(f"cannot signal container {container.id}: {e.message}") from None

    async def recover(self, container: Container) -> ProcessStatus:
        status = await self.tasks.status(container)
        if container.state is ContainerState.CREATED and status.exit is not None:
            # A created task that is gone was never started (or its start is unknowable).
            return ProcessStatus(container.pid, None, started=False)
        return status

    async def delete_container(self, container: Container) -> None:
        """The task (kill, wait, Delete, shim Shutdown, our FIFOs), the bundle with its
        rootfs mount and writable layer, the cgroup. Idempotent."""
        await self.tasks.remove(container)
        await self.layout.remove(container.id)
        cgroup = container.backend_info.get("cgroupsPath")
        if cgroup:
            await asyncio.to_thread(cgroupfs.remove, cgroup)

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        task = await self.tasks.running(container)
        process = await self.layout.process_spec(container, cmd)
        exec_id = secrets.token_hex(16)
        return await exec_sync(
            task.client,
            container.id,
            exec_id,
            process,
            task.bundle / EXEC_DIR / exec_id,
            timeout=timeout,
            limit=limit,
            kill_timeout=self.settings.timeout,
        )

    async def update_resources(self, container: Container, resources: Resources) -> None:
        task = await self.tasks.running(container)
        try:
            spec = oci.linux_resources(resources, self.layout.host)
            await task.client.update(container.id, spec)
        except SpecError as e:
            raise FailedPrecondition(f"cannot update container resources: {e}") from None
        except TTRPCError as e:
            raise FailedPrecondition(f"cannot update container resources: {e.message}") from None

    async def reopen_log(self, container: Container) -> None:
        task = await self.tasks.running(container)
        try:
            await asyncio.to_thread(task.output.log.reopen)
        except OSError as e:
            raise FailedPrecondition(f"cannot reopen log {container.log_path}: {e}") from None

    # -- streaming -------------------------------------------------------------------
    async def exec_session(self, container: Container, cmd: Sequence[str], stdio: Stdio) -> Session:
        try:
            task = await self.tasks.running(container)
        except FailedPrecondition as e:
            raise StreamStartError(str(e)) from None
        process = await self.layout.process_spec(container, cmd)
        exec_id = secrets.token_hex(16)
        return await ExecSession.start(
            task.client,
            container.id,
            exec_id,
            process,
            stdio,
            task.bundle / EXEC_DIR / exec_id,
            timeout=self.settings.timeout,
        )

    async def attach_session(self, container: Container, stdio: Stdio) -> Session:
        try:
            task = await self.tasks.running(container)
        except FailedPrecondition as e:
            raise StreamStartError(str(e)) from None
        return AttachSession(task, stdio)

    async def port_forward(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await netns.open_connection(self.pods.paths(sandbox).netns, port)

    # -- stats (shim_stats) ----------------------------------------------------------
    def reads_stats(self, container_id: str) -> bool:
        """Whether this handler reads ``container_id``'s stats through its shim."""
        return self.tasks.reads_stats(container_id)

    async def task_stats(self, container_id: str) -> CgroupStats | None:
        return await self.tasks.stats(container_id)

    # -- startup and shutdown ----------------------------------------------------------
    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        """Remove bundles (and their shims' tasks) no record knows, then orphan pods.
        A live pod's infra task is named by the pod's id."""
        done: list[str] = []
        known = await asyncio.to_thread(self.layout.known)
        for cid in sorted(known - containers - sandboxes):
            await self.tasks.remove_orphan(cid, self.layout.bundle(cid))
            await self.layout.remove(cid)
            done.append(f"removed orphan task {cid} (shim task, bundle, rootfs mount)")
        done += await self.pods.reconcile(sandboxes)
        for line in done:
            log.warning("reconcile %s: %s", self.handler, line)
        return done

    async def close(self) -> None:
        """Let go of every task (the shims keep running; a restart loads them again)."""
        shims, self._infra_shims = self._infra_shims, {}
        for shim in shims.values():
            with contextlib.suppress(Exception):
                await shim.close()
        await self.tasks.close()
        await self.hub.close()


class ShimStatsSource:
    """The stats cache's remote source: containers of the handlers configured with
    ``shim_stats``, read through their shims' Stats call."""

    def __init__(self, backends: Sequence[ShimBackend]) -> None:
        self._backends = tuple(b for b in backends if b.settings.shim_stats)

    def owns(self, container_id: str) -> bool:
        return any(b.reads_stats(container_id) for b in self._backends)

    async def read(self, container_id: str) -> CgroupStats | None:
        for b in self._backends:
            if b.reads_stats(container_id):
                return await b.task_stats(container_id)
        return None
