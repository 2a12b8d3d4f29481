"""The runc-family backend (runc, crun, youki): real containers under conmon.

Pods are pinned namespaces plus a directory of shared files (no pause process). A
container is an overlay of its image's snapshots, a bundle with a generated config.json,
and one conmon that runs the runtime's ``create`` and then supervises the process (logs,
exit file, attach socket), so containers outlive a restart of cri-async.

Layout (per handler): bundles ``<run_root>/<handler>/containers/<id>``, exit files
``.../exits``, conmon sockets ``.../s`` (short: attach paths must fit sun_path), pod files
``.../pods/<id>``, pinned namespaces ``<run_root>/ns``; writable layers
``<state_root>/containers/<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal as signals
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cri_async import cgroupfs, files, linux, rootfs
from cri_async.backends.base import (
    BackendStatus,
    ExecResult,
    ExitStatus,
    HandlerFeatures,
    ProcessStatus,
    StartError,
)
from cri_async.backends.ocicli import RuntimeCLI, RuntimeCLIError
from cri_async.cgroupfs import write_cgroup_resources
from cri_async.core.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from cri_async.core.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    Image,
    ImageSpec,
    NamespaceMode,
    NetworkStatus,
    Resources,
    Sandbox,
)
from cri_async.core.sandboxes import pod_hostname
from cri_async.monitor.conmon import Conmon, ConmonError, ExitInfo
from cri_async.network import podfiles
from cri_async.network.cni import CNI, CNIError, PortMapping
from cri_async.network.pins import NamespacePinner, PinError
from cri_async.oci import spec as oci
from cri_async.oci.defaults import capabilities_from_mask
from cri_async.oci.errors import SpecError
from cri_async.oci.user import ResolvedUser, UserError, resolve_user

log = logging.getLogger("cri_async.backends.oci")

SHM_SIZE = 64 << 20
_ORPHAN_CONFIG = ContainerConfig(ContainerMetadata("orphan"), ImageSpec())
DEFAULT_CGROUP_PARENT = "/cri-async"
POD_FILE_TARGETS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")


def host_facts() -> oci.HostFacts:
    status = Path("/proc/self/status").read_text()
    capbnd = next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:"))
    oom = int(Path("/proc/self/oom_score_adj").read_text().strip() or 0)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return oci.HostFacts(
        bounding_caps=frozenset(capabilities_from_mask(int(capbnd, 16))),
        min_oom_score_adj=oom,
        nofile_hard=nofile if nofile != resource.RLIM_INFINITY else 1 << 20,
        apparmor=Path("/sys/kernel/security/apparmor").exists(),
        selinux=Path("/sys/fs/selinux/enforce").exists(),
        cgroup_v2=Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        hugetlb=Path("/sys/fs/cgroup/hugetlb").is_dir(),
    )


def _text_in_root(root: Path, path: str) -> str | None:
    data = rootfs.read_in_root(root, path)
    return None if data is None else data.decode(errors="replace")


class OCIBackend:
    """One RuntimeClass handler backed by a runc-compatible runtime."""

    def __init__(
        self,
        handler: str,
        *,
        kind: str,
        binary: str,
        run_root: Path,
        state_root: Path,
        conmon_binary: str,
        pinner: NamespacePinner,
        lowers: Callable[[str], list[str] | None],
        socket_dir: Path | None = None,
        cni: CNI | None = None,
    ) -> None:
        self.handler = handler
        self.kind = kind
        self.binary = shutil.which(binary) or binary  # conmon wants an absolute path
        self.root = run_root
        self.layers_root = state_root
        self.conmon_binary = conmon_binary
        self.pinner = pinner
        self._lowers = lowers
        self.cni = cni
        # The node's pod CIDR from UpdateRuntimeConfig, for plugins that use it (ipRanges).
        self.pod_cidr: Callable[[], str] = str
        self.cli = RuntimeCLI(self.binary, str(run_root / "state"))
        # Attach sockets are reached as <socket_dir>/<64-hex id>/attach, which must fit
        # in sun_path (108 bytes): keep socket_dir short and shared by all handlers.
        self.socket_dir = socket_dir or run_root / "s"
        self.conmon = Conmon(
            conmon_binary,
            runtime_path=self.binary,
            runtime_args=self.cli.global_args(),
            socket_dir=str(self.socket_dir),
        )
        self._host: oci.HostFacts | None = None
        self._features: tuple[int, HandlerFeatures] | None = None

    # -- paths -----------------------------------------------------------------------
    def bundle(self, cid: str) -> Path:
        return self.root / "containers" / cid

    def layer_dir(self, cid: str) -> Path:
        return self.layers_root / cid

    @property
    def exits(self) -> Path:
        return self.root / "exits"

    def pod_dir(self, sid: str) -> Path:
        return self.root / "pods" / sid

    @property
    def host(self) -> oci.HostFacts:
        if self._host is None:
            self._host = host_facts()
        return self._host

    # -- readiness -------------------------------------------------------------------
    async def probe(self) -> BackendStatus:
        """Cheap enough for every RunPodSandbox: binaries are stat'ed each time, but the
        runtime's ``features`` output is cached until its binary changes."""
        missing = [b for b in (self.binary, self.conmon_binary) if not shutil.which(b)]
        if missing:
            self._features = None
            return BackendStatus(
                False, "BinaryMissing", f"{', '.join(missing)} not found (handler {self.handler!r})"
            )
        stamp = os.stat(shutil.which(self.binary) or self.binary).st_mtime_ns
        if self._features is None or self._features[0] != stamp:
            for d in (self.root / "containers", self.exits, self.socket_dir, self.root / "pods"):
                d.mkdir(parents=True, exist_ok=True)
            feats = await self.cli.features() if self.kind == "runc" else None
            rro = bool(feats and "rro" in (feats.get("mountOptions") or []))
            linux_ns = (feats or {}).get("linux") or {}
            userns = "user" in (linux_ns.get("namespaces") or [])
            self._features = (stamp, HandlerFeatures(rro, userns))
        return BackendStatus(
            True,
            features=self._features[1],
            info={"backend": self.kind, "binary": self.binary, "root": str(self.root)},
        )

    # -- pods ------------------------------------------------------------------------
    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        ns = sandbox.config.security.namespaces
        hostname = pod_hostname(sandbox.config)
        host_net = ns.network is NamespaceMode.NODE
        host_ipc = ns.ipc is NamespaceMode.NODE
        d = self.pod_dir(sandbox.id)
        try:
            pins = await self.pinner.pin(
                sandbox.id, hostname, net=not host_net, ipc=not host_ipc, uts=not host_net
            )
        except PinError as e:
            raise Internal(str(e)) from None
        network = NetworkStatus()
        try:
            await asyncio.to_thread(self._pod_files, sandbox, d, hostname, host_net, host_ipc)
            # Without a CNI config the pod keeps a loopback-only netns; Status reports
            # NetworkReady=false meanwhile, so kubelet starts only host-network pods.
            if self.cni is not None and pins.net is not None and self.cni.network is not None:
                network = await self._attach(sandbox, pins.net)
                hosts = podfiles.hosts(hostname, [network.ip, *network.additional_ips])
                await asyncio.to_thread((d / "hosts").write_text, hosts)
        except BaseException:
            await self.remove_sandbox(sandbox)
            raise
        info = {
            "podDir": str(d),
            "netns": pins.net or "",
            "ipcns": pins.ipc or "",
            "utsns": pins.uts or "",
            "hostname": os.uname().nodename if host_net else hostname,
            "cgroupParent": self._cgroup_parent(sandbox),
        }
        return sandbox.evolve(network=network, backend_info=info)

    async def _attach(self, sandbox: Sandbox, netns: str) -> NetworkStatus:
        assert self.cni is not None
        md = sandbox.metadata
        dns = sandbox.config.dns
        try:
            result = await self.cni.setup(
                sandbox.id,
                netns,
                pod_name=md.name,
                pod_namespace=md.namespace,
                pod_uid=md.uid,
                pod_cidr=self.pod_cidr(),
                port_mappings=[
                    PortMapping(p.host_port, p.container_port, p.protocol.value, p.host_ip)
                    for p in sandbox.config.port_mappings
                    if p.host_port
                ],
                dns={
                    "servers": list(dns.servers),
                    "searches": list(dns.searches),
                    "options": list(dns.options),
                }
                if dns
                else None,
            )
        except CNIError as e:
            raise FailedPrecondition(f"pod network setup failed: {e}") from None
        ips = list(result.ips)
        return NetworkStatus(ip=ips[0] if ips else "", additional_ips=tuple(ips[1:]))

    async def _detach(self, sandbox_id: str, netns: str | None) -> bool:
        """CNI DEL on its own deadline; a failure keeps the cache for a later retry and
        never blocks the caller (IPs are released on the next stop/remove or restart)."""
        if self.cni is None or sandbox_id not in self.cni.cached():
            return True
        try:
            await asyncio.shield(asyncio.wait_for(self.cni.teardown(sandbox_id, netns), 120))
            return True
        except (CNIError, TimeoutError) as e:
            log.error("pod %s: network teardown failed, will retry: %s", sandbox_id, e)
            return False

    def _pod_files(
        self, sandbox: Sandbox, d: Path, hostname: str, host_net: bool, host_ipc: bool
    ) -> None:
        d.mkdir(parents=True, exist_ok=True)
        host_resolv = files.read_text(Path("/etc/resolv.conf")) or ""
        if host_net:
            (d / "resolv.conf").write_text(host_resolv)
            (d / "hosts").write_text(files.read_text(Path("/etc/hosts")) or podfiles.hosts("", []))
            (d / "hostname").write_text(podfiles.hostname_file(os.uname().nodename))
        else:
            (d / "resolv.conf").write_text(podfiles.resolv_conf(sandbox.config.dns, host_resolv))
            (d / "hosts").write_text(podfiles.hosts(hostname, []))
            (d / "hostname").write_text(podfiles.hostname_file(hostname))
        if not host_ipc:
            shm = d / "shm"
            shm.mkdir(exist_ok=True)
            if not linux.is_mountpoint(str(shm)):
                linux.mount("shm", str(shm), "tmpfs", 0x2 | 0x4 | 0x8, f"mode=1777,size={SHM_SIZE}")

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        await self._detach(sandbox.id, sandbox.backend_info.get("netns") or None)

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        await self._detach(sandbox.id, sandbox.backend_info.get("netns") or None)
        await self.pinner.unpin(sandbox.id)
        d = self.pod_dir(sandbox.id)

        def run() -> None:
            linux.umount(str(d / "shm"))
            shutil.rmtree(d, ignore_errors=True)
            cgroupfs.remove(self._cgroup_parent(sandbox))

        await asyncio.to_thread(run)

    async def update_sandbox_resources(self, sandbox: Sandbox, resources: Resources) -> None:
        """Pod-level limits go on the pod cgroup, which no OCI runtime owns."""
        parent = self._cgroup_parent(sandbox)

        def run() -> None:
            cgroupfs.ensure(parent, ("cpu", "cpuacct", "memory", "pids"))
            write_cgroup_resources(parent, resources)

        try:
            await asyncio.to_thread(run)
        except OSError as e:
            raise FailedPrecondition(f"cannot update pod cgroup {parent}: {e}") from None

    def _cgroup_parent(self, sandbox: Sandbox) -> str:
        return sandbox.config.cgroup_parent or f"{DEFAULT_CGROUP_PARENT}/pod-{sandbox.id[:16]}"

    # -- startup reconciliation ---------------------------------------------------------
    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        """Remove host objects no database row knows (a crash between a host change and
        its commit, or rows deleted by hand). Returns one line per orphan removed."""
        done: list[str] = []
        dirs = self.root / "containers"
        known_bundles = set(os.listdir(dirs)) if dirs.is_dir() else set()
        try:
            runtime_ids = {str(c.get("id")) for c in await self.cli.list()}
        except RuntimeCLIError as e:  # e.g. the binary is missing: the handler is not ready
            log.warning("reconcile %s: cannot list containers: %s", self.handler, e)
            runtime_ids = set()
        for cid in sorted((known_bundles | runtime_ids) - containers):
            stub = Container(
                id=cid,
                sandbox_id="",
                config=_ORPHAN_CONFIG,
                image_id="",
                image_ref="",
                created_at=0,
            )
            await self.delete_container(stub)
            done.append(f"removed orphan container {cid} (bundle, rootfs mount, runtime state)")
        pods = self.root / "pods"
        pod_dirs = set(os.listdir(pods)) if pods.is_dir() else set()
        for sid in sorted((pod_dirs | self.pinner.pinned()) - sandboxes):
            await self.pinner.unpin(sid)
            d = self.pod_dir(sid)
            await asyncio.to_thread(linux.umount, str(d / "shm"))
            await asyncio.to_thread(shutil.rmtree, d, True)
            # Its record (and any kubelet-given parent) is gone; ours is derivable.
            await asyncio.to_thread(cgroupfs.remove, f"{DEFAULT_CGROUP_PARENT}/pod-{sid[:16]}")
            done.append(f"removed orphan pod sandbox {sid} (namespace pins, pod files, cgroup)")
        if self.cni is not None:
            for sid in sorted(set(self.cni.cached()) - sandboxes):
                if await self._detach(sid, None):
                    done.append(f"released the pod network of orphan pod sandbox {sid}")
        for line in done:
            log.warning("reconcile %s: %s", self.handler or "default", line)
        return done

    # -- containers ------------------------------------------------------------------
    def _pod_paths(self, sandbox: Sandbox) -> oci.PodPaths:
        b = sandbox.backend_info
        d = Path(b.get("podDir", str(self.pod_dir(sandbox.id))))
        shm = d / "shm"
        return oci.PodPaths(
            netns=b.get("netns") or None,
            ipcns=b.get("ipcns") or None,
            utsns=b.get("utsns") or None,
            hostname=b.get("hostname", ""),
            resolv_conf=str(d / "resolv.conf"),
            hosts=str(d / "hosts"),
            hostname_file=str(d / "hostname"),
            shm=str(shm) if b.get("ipcns") else "/dev/shm",
        )

    def _user(self, container: Container, image: Image, rootfs_dir: Path) -> ResolvedUser:
        sec = container.config.security
        try:
            return resolve_user(
                image_user=image.user,
                run_as_user=sec.run_as_user,
                run_as_group=sec.run_as_group,
                run_as_username=sec.run_as_username,
                supplemental_groups=sec.supplemental_groups,
                policy=sec.supplemental_groups_policy,
                passwd=_text_in_root(rootfs_dir, "/etc/passwd"),
                group=_text_in_root(rootfs_dir, "/etc/group"),
            )
        except (UserError, rootfs.RootfsError) as e:
            raise InvalidArgument(f"container {container.metadata.name!r}: {e}") from None

    def _prepare_mounts(self, container: Container, rootfs_dir: Path) -> None:
        for m in container.config.mounts:
            if m.host_path and m.image is None and not os.path.exists(m.host_path):
                os.makedirs(m.host_path, exist_ok=True)  # as kubelet expects (hostPath dirs)
            if m.host_path and m.image is None:
                directory = os.path.isdir(m.host_path)
                rootfs.make_mount_target(rootfs_dir, m.container_path, directory=directory)
        for target in POD_FILE_TARGETS:
            rootfs.make_mount_target(rootfs_dir, target, directory=False)

    async def create_container(
        self, sandbox: Sandbox, container: Container, image: Image
    ) -> Container:
        lowers = self._lowers(image.id)
        if not lowers:
            raise FailedPrecondition(
                f"image {image.id} has no unpacked layers on this node; pull it again"
            )
        cid = container.id
        bundle = self.bundle(cid)
        rootfs_dir = bundle / "rootfs"
        layer = self.layer_dir(cid)
        try:
            bundle.mkdir(parents=True, exist_ok=True)
            await rootfs.mount_overlay(rootfs_dir, lowers, layer / "fs", layer / "work")
            user = await asyncio.to_thread(self._user, container, image, rootfs_dir)
            try:
                await asyncio.to_thread(self._prepare_mounts, container, rootfs_dir)
            except rootfs.RootfsError as e:
                raise InvalidArgument(f"container {container.metadata.name!r}: {e}") from None
            try:
                spec = oci.container_spec(
                    sandbox,
                    container,
                    image,
                    rootfs=str(rootfs_dir),
                    pod=self._pod_paths(sandbox),
                    host=self.host,
                    cgroups_path=f"{self._cgroup_parent(sandbox)}/{cid}",
                    user=user,
                )
            except SpecError as e:
                raise InvalidArgument(f"container {container.metadata.name!r}: {e}") from None
            self._write_bundle(sandbox, container, bundle, spec)
            if container.log_path:
                os.makedirs(os.path.dirname(container.log_path), exist_ok=True)
            cfg = container.config
            try:
                pid = await self.conmon.create(
                    cid,
                    cfg.metadata.name,
                    bundle,
                    container.log_path or str(bundle / "ctr.log"),
                    tty=cfg.tty,
                    stdin=cfg.stdin,
                    stdin_once=cfg.stdin_once,
                    exit_dir=self.exits,
                )
            except ConmonError as e:
                raise FailedPrecondition(f"failed to create container: {e}") from None
        except BaseException:
            await self.delete_container(container)
            raise
        info = {
            "bundle": str(bundle),
            "layer": str(layer),
            "user": f"{user.uid}:{user.gid}",
            "cgroupsPath": f"{self._cgroup_parent(sandbox)}/{cid}",
            "writableLayer": str(layer / "fs"),
        }
        return container.evolve(pid=pid, backend_info=info)

    def _write_bundle(
        self, sandbox: Sandbox, container: Container, bundle: Path, spec: dict[str, Any]
    ) -> None:
        """Write the bundle's config.json; a hook for runtimes that adjust the spec or need
        more files in the bundle before conmon runs ``create``."""
        (bundle / "config.json").write_text(json.dumps(spec))

    async def start_container(self, container: Container) -> int:
        try:
            await self.cli.start(container.id)
        except RuntimeCLIError as e:
            raise StartError(str(e)) from None
        return container.pid

    async def wait(self, container: Container) -> ExitStatus:
        info = await self.conmon.wait_exit(container.id, self.bundle(container.id), self.exits)
        return self._exit_status(info)

    @staticmethod
    def _exit_status(info: ExitInfo) -> ExitStatus:
        return ExitStatus(
            exit_code=info.exit_code,
            finished_at=info.finished_at,
            reason="OOMKilled" if info.oom else "",
        )

    async def kill(self, container: Container, signal: int) -> None:
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.kill(container.id, signal, all=signal == signals.SIGKILL)

    async def recover(self, container: Container) -> ProcessStatus:
        info = self.conmon.exit_info(container.id, self.bundle(container.id), self.exits)
        if info is not None:
            return ProcessStatus(container.pid, self._exit_status(info))
        state = await self.cli.state(container.id)
        if state is not None and state.get("status") in ("running", "created", "paused"):
            return ProcessStatus(int(state.get("pid") or container.pid), None)
        lost = ExitStatus(255, time.time_ns(), "Unknown", "container state lost (host reboot?)")
        return ProcessStatus(container.pid, lost)

    async def delete_container(self, container: Container) -> None:
        cid = container.id
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.delete(cid, force=True)
        bundle = self.bundle(cid)
        await rootfs.unmount(bundle / "rootfs")

        def clean() -> None:
            self.conmon.remove(cid, self.exits)
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.rmtree(self.layer_dir(cid), ignore_errors=True)

        await asyncio.to_thread(clean)

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        # An exec runs as the container's own process does (user, env, cwd, capabilities).
        spec = json.loads(
            await asyncio.to_thread((self.bundle(container.id) / "config.json").read_text)
        )
        process = dict(spec["process"], args=list(cmd), terminal=container.config.tty)
        process.pop("consoleSize", None)
        workdir = self.bundle(container.id) / "exec"
        done = await self.conmon.exec_sync(
            container.id, process, timeout=timeout, workdir=workdir, limit=limit
        )
        if done.timed_out:
            raise DeadlineExceeded(f"command {list(cmd)!r} timed out after {timeout:g}s")
        return ExecResult(done.exit_code, done.stdout, done.stderr)

    async def update_resources(self, container: Container, resources: Resources) -> None:
        try:
            await self.cli.update(container.id, oci.linux_resources(resources, self.host))
        except (RuntimeCLIError, SpecError) as e:
            raise FailedPrecondition(f"cannot update container resources: {e}") from None

    async def reopen_log(self, container: Container) -> None:
        await self.conmon.reopen_log(self.bundle(container.id))
