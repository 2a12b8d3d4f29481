"""A pod's host side, shared by every backend that runs pods on this host's kernel objects:
pinned namespaces (and the pause process of a shared PID namespace), the files its
containers share (/etc/hosts, /etc/resolv.conf, /etc/hostname, /dev/shm), its CNI network
and its cgroup parent.

Layout: ``<root>/<pod id>/`` holds the pod files and the ``shm`` tmpfs; pins live where the
``NamespacePinner`` keeps them. What a pod got is recorded in ``Sandbox.backend_info``, so
it can be found and released after a restart even if the configuration changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from cri_async import cgroupfs, files, linux, waits
from cri_async.cgroupfs import write_cgroup_resources
from cri_async.core.errors import FailedPrecondition, Internal
from cri_async.core.model import (
    NamespaceMode,
    NetworkStatus,
    NodeNetwork,
    Resources,
    Sandbox,
    UserNamespace,
)
from cri_async.core.sandboxes import pod_hostname
from cri_async.monitor.reaper import Reaper
from cri_async.network import podfiles
from cri_async.network.cni import CNI, CNIError, PortMapping
from cri_async.network.pins import NamespacePinner, PinError
from cri_async.oci.spec import PodPaths

log = logging.getLogger(__name__)

SHM_SIZE = 64 << 20
DEFAULT_CGROUP_PARENT = "/cri-async"
PAUSE_PID_FILE = "pause.pid"
POD_FILES = ("hosts", "resolv.conf", "hostname")
PAUSE_EXIT_TIMEOUT = 5.0
_SHM_FLAGS = 0x2 | 0x4 | 0x8  # nosuid, nodev, noexec


def cgroup_parent(sandbox: Sandbox) -> str:
    """The pod's cgroup: kubelet's choice, else one of ours derived from the pod id."""
    return sandbox.config.cgroup_parent or default_cgroup_parent(sandbox.id)


def pod_userns(sandbox: Sandbox) -> UserNamespace | None:
    """The pod's own user namespace (mode POD, mappings checked by the core), else None."""
    userns = sandbox.config.security.namespaces.userns
    return userns if userns is not None and userns.mode is NamespaceMode.POD else None


def _give_files_to(d: Path, uid: int, gid: int) -> None:
    """The pod's files and /dev/shm belong to its user namespace's root, so root in its
    containers may write them as it could without a user namespace."""
    for name in POD_FILES:
        os.chown(d / name, uid, gid)
    if (d / "shm").is_dir():
        os.chown(d / "shm", uid, gid)


def default_cgroup_parent(sandbox_id: str) -> str:
    return f"{DEFAULT_CGROUP_PARENT}/pod-{sandbox_id[:16]}"


class PodHost:
    """Creates and releases pods' host objects for one handler (pod files under ``root``)."""

    def __init__(
        self,
        root: Path,
        pinner: NamespacePinner,
        *,
        cni: CNI | None,
        node: NodeNetwork,
        reaper: Reaper | None,
        pause: Callable[[], list[str] | None] | None,
        teardown_timeout: float,
    ) -> None:
        self.root = root
        self.pinner = pinner
        self.cni = cni
        self.node = node
        self.reaper = reaper
        self._pause = pause
        """The argv of the pause program for pods with a shared PID namespace, if any; None
        when the handler's runtime gives a pod's containers one PID namespace itself."""
        self.teardown_timeout = teardown_timeout

    def pod_dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    # -- create ------------------------------------------------------------------------
    async def create(self, sandbox: Sandbox) -> Sandbox:
        """Pin the pod's namespaces, write its files, attach its network; the record comes
        back with ``network`` and ``backend_info`` filled. Leaves nothing behind if it
        raises."""
        ns = sandbox.config.security.namespaces
        userns = pod_userns(sandbox)
        hostname = pod_hostname(sandbox.config)
        host_net = ns.network is NamespaceMode.NODE
        host_ipc = ns.ipc is NamespaceMode.NODE
        pause: list[str] | None = None
        if ns.pid is NamespaceMode.POD and self._pause is not None:
            pause = self._pause()
            if pause is None:
                raise FailedPrecondition(
                    "a pod sharing one PID namespace needs a pause program (install catatonit)"
                )
        d = self.pod_dir(sandbox.id)
        try:
            pins = await self.pinner.pin(
                sandbox.id,
                hostname,
                net=not host_net,
                ipc=not host_ipc,
                uts=not host_net,
                pause=pause,
                userns=userns,
            )
        except PinError as e:
            raise Internal(str(e)) from None
        network = NetworkStatus()
        info = {
            "podDir": str(d),
            "netns": pins.net or "",
            "ipcns": pins.ipc or "",
            "utsns": pins.uts or "",
            "pidns": pins.pid or "",
            "userns": pins.user or "",
            "pausePid": str(pins.pause_pid or ""),
            "hostname": os.uname().nodename if host_net else hostname,
            "cgroupParent": cgroup_parent(sandbox),
        }
        try:
            if pins.pause_pid:
                if self.reaper is not None:
                    self.reaper.adopt(pins.pause_pid)
                await asyncio.to_thread(self._place_pause, sandbox, d, pins.pause_pid)
            await asyncio.to_thread(self._write_files, sandbox, d, hostname, host_net, host_ipc)
            if userns is not None:
                await asyncio.to_thread(_give_files_to, d, *userns.root)
            # Without a CNI config the pod keeps a loopback-only netns; Status reports
            # NetworkReady=false meanwhile, so kubelet starts only host-network pods.
            if self.cni is not None and pins.net is not None and self.cni.network is not None:
                network = await self._attach(sandbox, pins.net)
                hosts = podfiles.hosts(hostname, [network.ip, *network.additional_ips])
                await asyncio.to_thread((d / "hosts").write_text, hosts)  # keeps its owner
        except BaseException:
            await asyncio.shield(self.remove(sandbox.evolve(backend_info=info)))
            raise
        return sandbox.evolve(network=network, backend_info=info)

    @staticmethod
    def _place_pause(sandbox: Sandbox, d: Path, pid: int) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / PAUSE_PID_FILE).write_text(f"{pid}\n")
        cgroupfs.join(pid, cgroup_parent(sandbox))

    def _write_files(
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
                linux.mount("shm", str(shm), "tmpfs", _SHM_FLAGS, f"mode=1777,size={SHM_SIZE}")

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
                pod_cidr=self.node.pod_cidr,
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

    # -- what containers join ----------------------------------------------------------
    def paths(self, sandbox: Sandbox) -> PodPaths:
        b = sandbox.backend_info
        d = Path(b.get("podDir", str(self.pod_dir(sandbox.id))))
        return PodPaths(
            netns=b.get("netns") or None,
            ipcns=b.get("ipcns") or None,
            utsns=b.get("utsns") or None,
            pidns=b.get("pidns") or None,
            userns=b.get("userns") or None,
            hostname=b.get("hostname", ""),
            resolv_conf=str(d / "resolv.conf"),
            hosts=str(d / "hosts"),
            hostname_file=str(d / "hostname"),
            shm=str(d / "shm") if b.get("ipcns") else "/dev/shm",
        )

    # -- stop and remove ----------------------------------------------------------------
    async def release_network(self, sandbox_id: str, netns: str | None) -> bool:
        """CNI DEL on its own deadline; a failure keeps the cache for a later retry and
        never blocks the caller (IPs are released on the next stop/remove or restart)."""
        if self.cni is None or sandbox_id not in self.cni.cached():
            return True
        try:
            await asyncio.shield(
                asyncio.wait_for(self.cni.teardown(sandbox_id, netns), self.teardown_timeout)
            )
            return True
        except (CNIError, TimeoutError) as e:
            log.error("pod %s: network teardown failed, will retry: %s", sandbox_id, e)
            return False

    async def stop(self, sandbox: Sandbox) -> None:
        """Release what a stopped pod no longer needs: its network and its pause process
        (its containers were stopped first)."""
        await self.release_network(sandbox.id, sandbox.backend_info.get("netns") or None)
        await self._stop_pause(self.pod_dir(sandbox.id))

    async def remove(self, sandbox: Sandbox) -> None:
        """Remove everything ``create`` made. Idempotent."""
        await self.release_network(sandbox.id, sandbox.backend_info.get("netns") or None)
        await self._remove_host_side(sandbox.id, cgroup_parent(sandbox))

    async def _remove_host_side(self, sandbox_id: str, cgroup: str) -> None:
        d = self.pod_dir(sandbox_id)
        await self._stop_pause(d)
        await self.pinner.unpin(sandbox_id)

        def run() -> None:
            linux.umount(str(d / "shm"))
            shutil.rmtree(d, ignore_errors=True)
            cgroupfs.remove(cgroup)

        await asyncio.to_thread(run)

    async def _stop_pause(self, d: Path) -> None:
        pid = await asyncio.to_thread(self._kill_pause, d)
        # Gone from the pod's cgroup only once it has exited: until then the cgroup
        # cannot be removed (rmdir: EBUSY).
        if pid is not None and not await waits.wait_pid_exit(pid, PAUSE_EXIT_TIMEOUT):
            log.error("pause process %d did not exit %gs after SIGKILL", pid, PAUSE_EXIT_TIMEOUT)

    @staticmethod
    def _kill_pause(d: Path) -> int | None:
        """SIGKILL the pod's pause process; its pid, if there was one."""
        pid = files.read_pid(d / PAUSE_PID_FILE)
        if pid is None:
            return None
        # The pid file is ours, but the process may be gone and the pid reused.
        cmdline = files.read_text(Path(f"/proc/{pid}/cmdline")) or ""
        killed = None
        if "catatonit" in cmdline or "pause" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed = pid
        (d / PAUSE_PID_FILE).unlink(missing_ok=True)
        return killed

    async def update_resources(self, sandbox: Sandbox, resources: Resources) -> None:
        """Pod-level limits go on the pod cgroup, which no OCI runtime owns."""
        parent = cgroup_parent(sandbox)

        def run() -> None:
            cgroupfs.ensure(parent, ("cpu", "cpuacct", "memory", "pids"))
            write_cgroup_resources(parent, resources)

        try:
            await asyncio.to_thread(run)
        except OSError as e:
            raise FailedPrecondition(f"cannot update pod cgroup {parent}: {e}") from None

    # -- startup ------------------------------------------------------------------------
    async def reconcile(self, sandboxes: set[str]) -> list[str]:
        """Remove the host side of pods no record knows; one line per orphan."""
        done: list[str] = []
        pod_dirs = set(os.listdir(self.root)) if self.root.is_dir() else set()
        for sid in sorted((pod_dirs | self.pinner.pinned()) - sandboxes):
            # Its record (and any kubelet-given parent) is gone; ours is derivable.
            await self._remove_host_side(sid, default_cgroup_parent(sid))
            done.append(f"removed orphan pod sandbox {sid} (namespace pins, pod files, cgroup)")
        if self.cni is not None:
            for sid in sorted(set(self.cni.cached()) - sandboxes):
                if await self.release_network(sid, None):
                    done.append(f"released the pod network of orphan pod sandbox {sid}")
        return done
