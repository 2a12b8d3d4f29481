"""The gVisor backend: one runsc sandbox per pod, the pod's containers inside it.

A pod is its host side (``PodHost``) plus an *infra container* that is the gVisor sandbox
(a pause binary, created and started by RunPodSandbox; its runsc id is the pod id);
containers join it through the ``io.kubernetes.cri.container-type``/``sandbox-id``
annotations. conmon supervises each container through the wrapper ``runsc-wrapper.sh``
and its *holder* (``runschold``), because a subcontainer's stdio and exit belong to
``runsc start``, not ``create``. What gVisor cannot do is refused first (``runsclimits``);
the spec is adjusted for runsc (``runscspec``). docs/runtimes.md ("How the runsc backend
works") has the design: networking modes, the holder, resources, exec and streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal as signals
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cri_async import cgroupfs, files, linux, proc, waits
from cri_async.backends import runschold, runsclimits
from cri_async.backends.bundles import Bundles, exit_status
from cri_async.backends.infra import find_infra_binary, infra_spec, install_rootfs
from cri_async.backends.ocicli import RuntimeCLIError
from cri_async.backends.runscspec import (
    HOLD_FLAG,
    INTERNAL_PID,
    NETWORK_MODES,
    START_LOG,
    STOP_WAIT,
    WAIT_LOG,
    cmdline_has,
    start_log_message,
    wrapper_script,
)
from cri_async.cgroupfs import write_cgroup_resources
from cri_async.core.errors import FailedPrecondition, Internal, InvalidArgument, Unimplemented
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
from cri_async.monitor.execattach import SessionFiles
from cri_async.monitor.reaper import Reaper
from cri_async.network import netns
from cri_async.oci.errors import runtime_message
from cri_async.pods.host import PodHost, cgroup_parent

log = logging.getLogger(__name__)

UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start"


class RunscBackend:
    """A RuntimeClass handler running pods as gVisor sandboxes (see the module's notes).

    ``cli`` carries runsc's global flags (``--platform``, ``--network``, ``--oci-seccomp``);
    ``network`` is one of ``NETWORK_MODES``; ``infra_binary`` names the static pause
    binary (empty finds catatonit, then busybox); ``wrapper`` is where the conmon runtime
    wrapper is written (``bundles.conmon`` runs it).
    """

    def __init__(
        self,
        handler: str,
        *,
        cli: runschold.RunscCLI,
        conmon_binary: str,
        pods: PodHost,
        bundles: Bundles,
        wrapper: Path,
        platform: str,
        network: str,
        infra_binary: str,
        reaper: Reaper | None,
    ) -> None:
        if network not in NETWORK_MODES:
            raise ValueError(f"runsc network mode {network!r} is not one of {NETWORK_MODES}")
        self.handler = handler
        self.cli = cli
        self.conmon_binary = conmon_binary
        self.pods = pods
        self.bundles = bundles
        self.wrapper = wrapper
        self.platform = platform
        self.network = network
        self.infra_binary = infra_binary
        self.reaper = reaper
        self._infra: tuple[str, tuple[str, ...]] | None = None
        self._exec_seccomp: bool | None = None

    # -- paths -----------------------------------------------------------------------
    @property
    def infra_rootfs(self) -> Path:
        return self.bundles.root / "infra"

    def infra_bundle(self, sid: str) -> Path:
        return self.pods.pod_dir(sid) / "infra"

    # -- readiness -------------------------------------------------------------------
    async def probe(self) -> BackendStatus:
        binary = self.cli.binary
        missing = [b for b in (binary, self.conmon_binary) if not shutil.which(b)]
        if missing:
            return BackendStatus(
                False, "BinaryMissing", f"{', '.join(missing)} not found (handler {self.handler!r})"
            )
        if self._infra is None:
            self._infra = await asyncio.to_thread(find_infra_binary, self.infra_binary)
        if self._infra is None:
            return BackendStatus(
                False,
                "InfraBinaryMissing",
                f"no static pause binary for runsc pods (handler {self.handler!r}): "
                f"{self.infra_binary or 'install catatonit or busybox-static'}",
            )
        try:
            await asyncio.to_thread(self._prepare_files, self._infra[0])
        except OSError as e:
            return BackendStatus(False, "SetupFailed", f"runsc handler {self.handler!r}: {e}")
        return BackendStatus(
            True,
            # A read-only bind in gVisor covers what is below it too ("rro" becomes "ro").
            features=HandlerFeatures(recursive_read_only_mounts=True, user_namespaces=False),
            info={
                "backend": "runsc",
                "binary": binary,
                "root": str(self.bundles.root),
                "platform": self.platform,
                "network": self.network,
                "infra": " ".join([self._infra[0], *self._infra[1][1:]]),
            },
        )

    def _prepare_files(self, infra: str) -> None:
        self.bundles.make_dirs()
        for d in (self.pods.root, Path(self.cli.root)):
            d.mkdir(parents=True, exist_ok=True)
        script = wrapper_script(self.cli.binary, self.cli.global_args())
        if files.read_text(self.wrapper) != script or not os.access(self.wrapper, os.X_OK):
            files.write_atomic(self.wrapper, script.encode(), mode=0o755, durable=False)
        install_rootfs(self.infra_rootfs, infra)

    # -- pods ------------------------------------------------------------------------
    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        runsclimits.check_sandbox(sandbox.config)
        if self._infra is None:
            status = await self.probe()
            if not status.ready:
                raise FailedPrecondition(status.message)
        sandbox = await self.pods.create(sandbox)
        try:
            await self._allow_low_ports(sandbox)
            pid = await self._start_infra(sandbox)
        except BaseException:
            await asyncio.shield(self.remove_sandbox(sandbox))
            raise
        info = dict(sandbox.backend_info, infra=sandbox.id, infraPid=str(pid))
        return sandbox.evolve(backend_info=info)

    async def _allow_low_ports(self, sandbox: Sandbox) -> None:
        """In host mode the sandbox binds the pod's ports as an unprivileged host process, so
        ports below 1024 (nginx's 80) need ``ip_unprivileged_port_start`` lowered in the
        pod's netns (runsc applies no sysctls itself), as containerd does for every pod."""
        path = sandbox.backend_info.get("netns")
        if path and self._sandbox_network(sandbox) == "host":
            value = sandbox.config.sysctls.get(UNPRIVILEGED_PORTS, "0")
            await netns.call_in_netns(path, lambda: netns.write_sysctl(UNPRIVILEGED_PORTS, value))

    def _sandbox_network(self, sandbox: Sandbox) -> str:
        # A host-network pod has no netns pin: runsc then uses the host's stack.
        return self.network if sandbox.backend_info.get("netns") else "host"

    async def _start_infra(self, sandbox: Sandbox) -> int:
        assert self._infra is not None
        sid = sandbox.id
        bundle = self.infra_bundle(sid)
        info = sandbox.backend_info
        spec = infra_spec(
            sandbox,
            rootfs=str(self.infra_rootfs),
            args=self._infra[1],
            netns=info.get("netns") or None,
            hostname=info.get("hostname", ""),
            cgroups_path=f"{cgroup_parent(sandbox)}/{sid}",
            oom_score_adj=self.bundles.host.min_oom_score_adj,
            bounding_caps=self.bundles.host.bounding_caps,
        )
        await asyncio.to_thread(bundle.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
        network = self._sandbox_network(sandbox)
        pidfile = bundle / "pidfile"
        create = ["create", "--bundle", str(bundle), "--pid-file", str(pidfile), sid]
        await self._infra_command(network, create, bundle / "create.log", "create")
        pid = files.read_pid(pidfile) or 0
        if self.reaper is not None and pid > 0:
            self.reaper.adopt(pid)  # our orphan now: reap it at once so `runsc delete` is fast
        await self._infra_command(network, ["start", sid], bundle / "start.log", "start")
        log.debug("runsc sandbox %s: pid %d (network %s)", sid, pid, network)
        return pid

    async def _infra_command(self, network: str, args: list[str], out: Path, what: str) -> None:
        """Run ``runsc create``/``start`` for a pod's sandbox with the pod's network mode;
        its output goes to ``out``, never a pipe (the sandbox inherits create's stdio).
        Internal with runsc's message if it fails."""
        argv = [
            self.cli.binary,
            f"--root={self.cli.root}",
            f"--platform={self.platform}",
            f"--network={network}",
            "--oci-seccomp",
            *args,
        ]
        if network == "sandbox":
            # gVisor #10704: netstack setup (in create and start) refuses any netns whose
            # /proc/sys/net/core/rmem_default it can see, which this kernel shows in every
            # netns; hide it in a private mount namespace.
            script = 'mount -t tmpfs none /proc/sys/net && exec "$@"'
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "x", *argv]
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            rc = (await proc.run(argv, timeout=self.cli.timeout, output=fd)).returncode
        except proc.TimedOut:
            raise Internal(f"runsc {what} of the pod sandbox timed out") from None
        finally:
            os.close(fd)
        if rc != 0:
            text = runtime_message(await asyncio.to_thread(out.read_text, errors="replace"))
            raise Internal(f"runsc could not {what} the pod sandbox: {text[-2000:]}")

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        """Kill the sandbox (its containers were stopped before); state stays until remove."""
        sid = sandbox.id
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.kill(sid, signals.SIGKILL)
        pid = int(sandbox.backend_info.get("infraPid") or 0)
        mine = pid > 0 and cmdline_has(pid, b"runsc-sandbox", sid.encode())
        if mine and not await waits.wait_pid_exit(pid, STOP_WAIT):
            log.warning("runsc sandbox %s (pid %d) still running after SIGKILL", sid, pid)
        await self.pods.stop(sandbox)

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        sid = sandbox.id
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.delete(sid, force=True)
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
        if container.config.tty:
            raise InvalidArgument(
                f"container {container.metadata.name!r}: tty containers are not supported by "
                "the runsc handler (runsc takes the console at create and uses it at start)"
            )
        if not sandbox.backend_info.get("infra"):
            raise FailedPrecondition(f"pod sandbox {sandbox.id} has no runsc sandbox")
        runsclimits.check_container(
            container.config,
            host_network_stack=self.network == "host",
            host_mounts=await asyncio.to_thread(lambda: [m[0] for m in linux.mountinfo()]),
        )

        def adjust(spec: dict[str, Any]) -> None:
            target = self.bundles.bundle(pid_target.id) if pid_target is not None else None
            bundle = self.bundles.bundle(container.id)
            for note in runschold.adjust_spec(spec, bundle, sandbox.id, container, target):
                log.info("runsc container %s (%s): %s", container.id, container.metadata.name, note)

        try:
            ready = await self.bundles.prepare(
                sandbox,
                container,
                image,
                pod=self.pods.paths(sandbox),
                cgroups_path=f"{cgroup_parent(sandbox)}/{container.id}",
                pid_target=pid_target,
                adjust=adjust,
            )
            await asyncio.to_thread(runschold.make_fifos, ready.bundle)
            pid = await self.bundles.supervise(container, ready.bundle)
        except BaseException:
            await self.delete_container(container)
            raise
        return container.evolve(pid=pid, backend_info=ready.backend_info, user=ready.container_user)

    async def start_container(self, container: Container) -> int:
        bundle = self.bundles.bundle(container.id)
        try:
            async with asyncio.timeout(self.cli.timeout):
                rc = await runschold.signal_start(bundle, container.pid)
        except TimeoutError:
            raise StartError(f"runsc start took longer than {self.cli.timeout:g}s") from None
        if rc != 0:
            message = await asyncio.to_thread(start_log_message, bundle / START_LOG)
            raise StartError(f"runsc start failed (exit {rc}): {message or 'no message'}")
        return container.pid

    async def wait(self, container: Container) -> ExitStatus:
        status = await self.bundles.wait(container.id)
        return await asyncio.to_thread(self._explain, container, status)

    async def kill(self, container: Container, signal: int) -> None:
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.kill(container.id, signal, all=signal == signals.SIGKILL)

    async def recover(self, container: Container) -> ProcessStatus:
        if container.state is ContainerState.CREATED:
            state = await self.cli.state(container.id)
            if state is None or state.get("status") == "created":
                return ProcessStatus(container.pid, None, started=False)
        info = self.bundles.exit_info(container.id)
        if info is not None:
            return ProcessStatus(container.pid, self._explain(container, exit_status(info)))
        state = await self.cli.state(container.id)
        if state is not None and state.get("status") in ("running", "created", "paused"):
            # runsc reports the sandbox's pid for every container; ours is the holder's.
            return ProcessStatus(container.pid, None)
        lost = ExitStatus(255, time.time_ns(), "Unknown", "container state lost (host reboot?)")
        return ProcessStatus(container.pid, self._explain(container, lost))

    def _explain(self, container: Container, status: ExitStatus) -> ExitStatus:
        """An exit the holder could not learn from runsc: the whole sandbox died (a kill,
        or the host's OOM killer in the pod sandbox's cgroup)."""
        bundle = self.bundles.bundle(container.id)
        why = files.read_text(bundle / WAIT_LOG)
        if status.exit_code != 255 or not why:
            return status
        why = why.strip().splitlines()[-1] if why.strip() else why
        if runschold.sandbox_oom_killed(bundle, container.sandbox_id):
            return replace(
                status,
                exit_code=137,
                reason="OOMKilled",
                message="the pod's gVisor sandbox was killed for lack of memory",
            )
        return replace(status, message=f"the pod's gVisor sandbox is gone: {why}"[:2000])

    async def delete_container(self, container: Container) -> None:
        cid = container.id
        bundle = self.bundles.bundle(cid)
        # A created container that was never started has a holder waiting for the word.
        holder = files.read_pid(bundle / "pidfile")
        if holder and cmdline_has(holder, HOLD_FLAG.encode(), cid.encode()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signals.SIGKILL)
        conmon_pid = self.bundles.conmon.conmon_pid(bundle)
        if conmon_pid and cmdline_has(conmon_pid, b"conmon", cid.encode()):
            # It writes its exit files into the bundle: let it finish before the rmtree.
            await waits.wait_pid_exit(conmon_pid, STOP_WAIT)
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.delete(cid, force=True)
        await self.bundles.remove(cid)

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        await self._check_exec_seccomp(container)
        process = await self.bundles.process_spec(container, cmd)
        process["terminal"] = False
        workdir = self.bundles.bundle(container.id) / "exec" / secrets.token_hex(8)
        marker = workdir / INTERNAL_PID

        def prepare() -> None:
            workdir.mkdir(parents=True)
            marker.touch()

        async def kill_exec() -> None:
            """Kill the exec'd process inside the sandbox (the host-side runsc is gone)."""
            pid = files.read_pid(marker)
            if pid is not None:
                await self.cli.kill_pid(container.id, pid, signals.SIGKILL)

        await asyncio.to_thread(prepare)
        try:
            return await self.bundles.exec_sync(
                container, process, timeout, limit, workdir=workdir, on_timeout=kill_exec
            )
        except asyncio.CancelledError:
            await asyncio.shield(kill_exec())
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _check_exec_seccomp(self, container: Container) -> None:
        """Refuse to exec into a container with a seccomp profile when this runsc would
        run the new process without it."""
        if self._exec_seccomp is None:
            version = ""
            with contextlib.suppress(RuntimeCLIError):
                version = await self.cli.version()
            self._exec_seccomp = runsclimits.exec_applies_seccomp(version)
        bundle = self.bundles.bundle(container.id)
        if not self._exec_seccomp and await asyncio.to_thread(runschold.has_seccomp, bundle):
            raise FailedPrecondition(
                f"container {container.id} runs under a seccomp profile, which this runsc "
                "does not apply to processes started by exec (gVisor does from release "
                "20260308): exec refused rather than run unfiltered"
            )

    async def update_resources(self, container: Container, resources: Resources) -> None:
        path = self.bundles.bundle(container.id) / "config.json"
        try:
            spec = json.loads(await asyncio.to_thread(path.read_text))
        except FileNotFoundError:
            raise FailedPrecondition(f"container {container.id} has no bundle") from None
        cgroup = str((spec.get("linux") or {}).get("cgroupsPath") or "")
        if not cgroup:
            raise FailedPrecondition(f"container {container.id} has no cgroupsPath")
        try:
            written = await asyncio.to_thread(write_cgroup_resources, cgroup, resources)
        except OSError as e:
            raise FailedPrecondition(f"cannot update container resources: {e}") from None
        log.debug("runsc container %s: wrote %s", container.id, ", ".join(written))

    async def reopen_log(self, container: Container) -> None:
        await self.bundles.reopen_log(container)

    # -- streaming (Exec/Attach/PortForward) ----------------------------------------------
    async def exec_session(self, container: Container, cmd: Sequence[str], stdio: Stdio) -> Session:
        try:
            await self._check_exec_seccomp(container)
        except FailedPrecondition as e:
            raise StreamStartError(str(e)) from None
        process = await self.bundles.process_spec(container, cmd)
        process["terminal"] = stdio.tty

        async def kill(sf: SessionFiles) -> None:
            """The process lives in the sandbox: kill it there, then runsc's waiter."""
            pid = files.read_pid(sf.dir / INTERNAL_PID)
            if pid is not None:
                await self.cli.kill_pid(container.id, pid, signals.SIGKILL)
            proc.kill_tree(files.read_pid(sf.pidfile))

        return await self.bundles.exec_session(
            container, process, stdio, marker=INTERNAL_PID, kill=kill
        )

    async def attach_session(self, container: Container, stdio: Stdio) -> Session:
        return await self.bundles.attach_session(container)

    async def port_forward(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        network = self._sandbox_network(sandbox)
        if network != "host":
            raise Unimplemented(
                f"port forwarding needs runsc network mode host; pod {sandbox.id} uses "
                f"{network!r}, whose loopback lives inside gVisor"
            )
        return await netns.open_connection(sandbox.backend_info.get("netns") or None, port)

    # -- startup and shutdown ----------------------------------------------------------
    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        """Remove host objects no record knows. Infra containers are named by their pods'
        ids: those of live pods are not orphans."""
        await asyncio.to_thread(Path(self.cli.root).mkdir, parents=True, exist_ok=True)
        done: list[str] = []
        try:
            runtime_ids = {str(c.get("id")) for c in await self.cli.list()}
        except RuntimeCLIError as e:
            log.warning("reconcile %s: cannot list containers: %s", self.handler, e)
            runtime_ids = set()
        for cid in sorted((self.bundles.known() | runtime_ids) - containers - sandboxes):
            with contextlib.suppress(RuntimeCLIError):
                await self.cli.delete(cid, force=True)
            await self.bundles.remove(cid)
            done.append(f"removed orphan container {cid} (bundle, rootfs mount, runtime state)")
        done += await self.pods.reconcile(sandboxes)
        for line in done:
            log.warning("reconcile %s: %s", self.handler, line)
        return done

    async def close(self) -> None:
        return None
