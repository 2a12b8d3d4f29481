"""The runc-family backend (runc, crun, youki): real containers under conmon.

A pod is its host side (``PodHost``: pinned namespaces, shared files, network, cgroup; no
pause process unless its containers share a PID namespace). A container is a bundle
(``Bundles``: overlay rootfs, config.json, conmon) started with the runtime's ``start``.

Streaming: exec runs under a conmon of its own in exec-attach mode, attach connects to the
container's conmon, port-forward dials inside the pod's netns (``network.netns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as signals
import time
from collections.abc import Sequence

from cri_async.backends.bundles import Bundles, exit_status
from cri_async.backends.features import runtime_features
from cri_async.backends.ocicli import RuntimeCLI, RuntimeCLIError
from cri_async.core.errors import FailedPrecondition
from cri_async.core.model import Container, ContainerState, Image, Resources, Sandbox
from cri_async.core.ports import (
    BackendStatus,
    ExecResult,
    ExitStatus,
    HandlerFeatures,
    ProcessStatus,
    StartError,
)
from cri_async.core.streams import Session, Stdio
from cri_async.network import netns
from cri_async.oci import spec as oci
from cri_async.oci.errors import SpecError
from cri_async.pods.host import PodHost, cgroup_parent

log = logging.getLogger(__name__)


class RuncBackend:
    """One RuntimeClass handler backed by a runc-compatible runtime."""

    def __init__(
        self,
        handler: str,
        *,
        kind: str,
        cli: RuntimeCLI,
        conmon_binary: str,
        pods: PodHost,
        bundles: Bundles,
    ) -> None:
        self.handler = handler
        self.kind = kind
        self.cli = cli
        self.conmon_binary = conmon_binary
        self.pods = pods
        self.bundles = bundles
        self._features: tuple[int, HandlerFeatures] | None = None

    # -- readiness -------------------------------------------------------------------
    async def probe(self) -> BackendStatus:
        """Cheap enough for every RunPodSandbox: binaries are stat'ed each time, but the
        runtime's ``features`` output is cached until its binary changes."""
        binary = self.cli.binary
        missing = [b for b in (binary, self.conmon_binary) if not shutil.which(b)]
        if missing:
            self._features = None
            return BackendStatus(
                False, "BinaryMissing", f"{', '.join(missing)} not found (handler {self.handler!r})"
            )
        stamp = os.stat(shutil.which(binary) or binary).st_mtime_ns
        if self._features is None or self._features[0] != stamp:
            self.bundles.make_dirs()
            self.pods.root.mkdir(parents=True, exist_ok=True)
            feats = await self.cli.features() if self.kind == "runc" else None
            version = ""
            if self.kind != "runc":
                with contextlib.suppress(RuntimeCLIError):
                    version = await self.cli.version()
            self._features = (stamp, runtime_features(self.kind, feats, version))
        return BackendStatus(
            True,
            features=self._features[1],
            info={"backend": self.kind, "binary": binary, "root": str(self.bundles.root)},
        )

    # -- pods ------------------------------------------------------------------------
    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        return await self.pods.create(sandbox)

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        await self.pods.stop(sandbox)

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
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
        cgroups_path = f"{cgroup_parent(sandbox)}/{container.id}"
        try:
            ready = await self.bundles.prepare(
                sandbox,
                container,
                image,
                pod=self.pods.paths(sandbox),
                cgroups_path=cgroups_path,
                pid_target=pid_target,
            )
            pid = await self.bundles.supervise(container, ready.bundle)
        except BaseException:
            await self.delete_container(container)
            raise
        return container.evolve(pid=pid, backend_info=ready.backend_info, user=ready.container_user)

    async def start_container(self, container: Container) -> int:
        try:
            await self.cli.start(container.id)
        except RuntimeCLIError as e:
            raise StartError(str(e)) from None
        return container.pid

    async def wait(self, container: Container) -> ExitStatus:
        return await self.bundles.wait(container.id)

    async def kill(self, container: Container, signal: int) -> None:
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.kill(container.id, signal, all=signal == signals.SIGKILL)

    async def recover(self, container: Container) -> ProcessStatus:
        """From conmon's files and /proc; the runtime is asked only when neither an exit
        file nor a live conmon settles it (startup calls this for every running
        container before it serves), or whether a created container was started."""
        if container.state is ContainerState.CREATED:
            state = await self.cli.state(container.id)
            if state is None or state.get("status") == "created":
                return ProcessStatus(container.pid, None, started=False)
        info = self.bundles.exit_info(container.id)
        if info is None and self.bundles.supervised(container.id):
            return ProcessStatus(container.pid, None)  # its conmon will write the exit
        if info is None:
            state = await self.cli.state(container.id)
            if state is not None and state.get("status") in ("running", "created", "paused"):
                return ProcessStatus(int(state.get("pid") or container.pid), None)
            info = self.bundles.exit_info(container.id)  # conmon may have just written it
        if info is not None:
            return ProcessStatus(container.pid, exit_status(info))
        lost = ExitStatus(255, time.time_ns(), "Unknown", "container state lost (host reboot?)")
        return ProcessStatus(container.pid, lost)

    async def delete_container(self, container: Container) -> None:
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.delete(container.id, force=True)
        await self.bundles.remove(container.id)

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        process = await self.bundles.process_spec(container, cmd)
        process["terminal"] = container.config.tty
        workdir = self.bundles.bundle(container.id) / "exec"
        return await self.bundles.exec_sync(container, process, timeout, limit, workdir=workdir)

    async def update_resources(self, container: Container, resources: Resources) -> None:
        try:
            await self.cli.update(container.id, oci.linux_resources(resources, self.bundles.host))
        except (RuntimeCLIError, SpecError) as e:
            raise FailedPrecondition(f"cannot update container resources: {e}") from None

    async def reopen_log(self, container: Container) -> None:
        await self.bundles.reopen_log(container)

    # -- streaming (Exec/Attach/PortForward) ----------------------------------------------
    async def exec_session(self, container: Container, cmd: Sequence[str], stdio: Stdio) -> Session:
        process = await self.bundles.process_spec(container, cmd)
        process["terminal"] = stdio.tty
        return await self.bundles.exec_session(container, process, stdio)

    async def attach_session(self, container: Container, stdio: Stdio) -> Session:
        return await self.bundles.attach_session(container)

    async def port_forward(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # A host-network pod has no pinned netns: its ports are the host's.
        return await netns.open_connection(sandbox.backend_info.get("netns") or None, port)

    # -- startup and shutdown ----------------------------------------------------------
    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        """Remove host objects no database row knows (a crash between a host change and
        its commit, or rows deleted by hand). Returns one line per orphan removed."""
        done: list[str] = []
        try:
            runtime_ids = {str(c.get("id")) for c in await self.cli.list()}
        except RuntimeCLIError as e:  # e.g. the binary is missing: the handler is not ready
            log.warning("reconcile %s: cannot list containers: %s", self.handler, e)
            runtime_ids = set()
        for cid in sorted((self.bundles.known() | runtime_ids) - containers):
            with contextlib.suppress(RuntimeCLIError):
                await self.cli.delete(cid, force=True)
            await self.bundles.remove(cid)
            done.append(f"removed orphan container {cid} (bundle, rootfs mount, runtime state)")
        done += await self.pods.reconcile(sandboxes)
        for line in done:
            log.warning("reconcile %s: %s", self.handler or "default", line)
        return done

    async def close(self) -> None:
        return None
