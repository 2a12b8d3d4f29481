"""A handler's containers on disk and under conmon: the overlay root filesystem, the bundle
with its generated config.json (:class:`BundleLayout`), and the conmon that runs the
runtime's ``create`` and then supervises the process (logs, exit file, attach socket), so
containers outlive a restart of cri-async (:class:`Bundles`). The runc-family and runsc
backends use both: they differ in how they start, stop and reach a container, not in how
they lay one out. The shim v2 backend uses the layout alone (its shims supervise).

Layout: bundles ``<root>/containers/<id>``, exit files ``<root>/exits``, conmon sockets
``<socket_dir>`` (short and shared by all handlers: attach paths must fit sun_path),
writable layers ``<layers_root>/<id>``, streaming exec sessions
``<bundle>/sessions/<session id>`` (each with a conmon of its own, see
``monitor.execattach``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cri_async import files, rootfs
from cri_async.backends import specinputs, usernsfs
from cri_async.core.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cri_async.core.model import Container, ContainerUser, Image, Sandbox, UserNamespace
from cri_async.core.ports import ExecResult, ExitStatus
from cri_async.core.streams import Session, Stdio, StreamStartError
from cri_async.monitor import execattach
from cri_async.monitor.conmon import Conmon, ConmonError, ExitInfo
from cri_async.oci import spec as oci
from cri_async.oci.errors import SpecError, SpecUnsupported
from cri_async.oci.user import ResolvedUser

log = logging.getLogger(__name__)

POD_FILE_TARGETS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A container ready for conmon: its bundle holds config.json and a mounted rootfs."""

    bundle: Path
    user: ResolvedUser
    spec: dict[str, Any]
    backend_info: dict[str, str]

    @property
    def container_user(self) -> ContainerUser:
        """The identity of the container's first process, as ContainerStatus reports it:
        uid, primary gid and every group it holds (the primary one included)."""
        return ContainerUser(self.user.uid, self.user.gid, self.user.additional_gids)


def exit_status(info: ExitInfo) -> ExitStatus:
    return ExitStatus(
        exit_code=info.exit_code,
        finished_at=info.finished_at,
        reason="OOMKilled" if info.oom else "",
    )


class BundleLayout:
    """One handler's container bundles on disk: rootfs, config.json, writable layer."""

    def __init__(
        self,
        *,
        root: Path,
        layers_root: Path,
        lowers: Callable[[str], list[str] | None],
        host: oci.HostFacts,
    ) -> None:
        self.root = root
        self.layers_root = layers_root
        self._lowers = lowers
        self.host = host

    # -- paths -----------------------------------------------------------------------
    def bundle(self, cid: str) -> Path:
        return self.root / "containers" / cid

    def layer_dir(self, cid: str) -> Path:
        return self.layers_root / cid

    def make_dirs(self) -> None:
        (self.root / "containers").mkdir(parents=True, exist_ok=True)

    def known(self) -> set[str]:
        """Container ids that have a bundle (for startup reconciliation)."""
        d = self.root / "containers"
        return set(os.listdir(d)) if d.is_dir() else set()

    # -- create ------------------------------------------------------------------------
    async def prepare(
        self,
        sandbox: Sandbox,
        container: Container,
        image: Image,
        *,
        pod: oci.PodPaths,
        cgroups_path: str,
        pid_target: Container | None = None,
        adjust: Callable[[dict[str, Any]], None] | None = None,
    ) -> Prepared:
        """Mount the rootfs, resolve the user, build and write config.json (``adjust``, run
        in a worker thread, may change the spec first). The caller removes the container if
        this raises."""
        lowers = self._lowers(image.id)
        if not lowers:
            raise FailedPrecondition(
                f"image {image.id} has no unpacked layers on this node; pull it again"
            )
        cid = container.id
        bundle = self.bundle(cid)
        rootfs_dir = bundle / "rootfs"
        layer = self.layer_dir(cid)
        await asyncio.to_thread(bundle.mkdir, parents=True, exist_ok=True)
        try:
            userns = usernsfs.container_userns(sandbox, container, pod)
        except SpecError as e:
            raise InvalidArgument(f"container {container.metadata.name!r}: {e}") from None
        except LookupError as e:
            raise FailedPrecondition(str(e)) from None
        idmap = usernsfs.rootfs_idmap(userns, pod, bundle) if userns is not None else None
        await rootfs.mount_overlay(rootfs_dir, lowers, layer / "fs", layer / "work", idmap)
        if idmap is not None:
            await asyncio.to_thread(usernsfs.make_reachable, bundle, pod)
        user, spec = await asyncio.to_thread(
            self._build,
            sandbox,
            container,
            image,
            rootfs_dir,
            pod,
            cgroups_path,
            pid_target,
            userns,
        )
        if adjust is not None:
            await asyncio.to_thread(adjust, spec)  # it may look at the mounted rootfs
        # Root only: it holds the container's environment (secrets, often).
        data = json.dumps(spec).encode()
        await asyncio.to_thread(files.write_atomic, bundle / "config.json", data, durable=False)
        info = {
            "bundle": str(bundle),
            "layer": str(layer),
            "user": f"{user.uid}:{user.gid}",
            "cgroupsPath": cgroups_path,
            "writableLayer": str(layer / "fs"),
        }
        return Prepared(bundle, user, spec, info)

    def _build(
        self,
        sandbox: Sandbox,
        container: Container,
        image: Image,
        rootfs_dir: Path,
        pod: oci.PodPaths,
        cgroups_path: str,
        pid_target: Container | None,
        userns: UserNamespace | None,
    ) -> tuple[ResolvedUser, dict[str, Any]]:
        """In a thread: every host read (and mount) the spec needs, then the pure spec
        builder."""
        cfg = container.config
        name = container.metadata.name
        user = specinputs.container_user(container, image, rootfs_dir)
        try:
            self._prepare_mounts(container, rootfs_dir)
        except rootfs.RootfsError as e:
            raise InvalidArgument(f"container {name!r}: {e}") from None
        try:
            if userns is not None and pod.userns:
                staged = usernsfs.stage_volumes(
                    self.bundle(container.id), cfg.mounts, userns, pod.userns
                )
                container = container.evolve(config=replace(cfg, mounts=staged))
            spec = oci.container_spec(
                sandbox,
                container,
                image,
                rootfs=str(rootfs_dir),
                pod=pod,
                host=self.host,
                cgroups_path=cgroups_path,
                user=user,
                seccomp_localhost=specinputs.seccomp_localhost(cfg.security.seccomp),
                target_pidns=specinputs.target_pidns(pid_target),
                devices=specinputs.device_nodes(cfg.devices),
                host_devices=specinputs.host_devices() if cfg.security.privileged else (),
            )
        except SpecUnsupported as e:
            raise FailedPrecondition(f"container {name!r}: {e}") from None
        except SpecError as e:
            raise InvalidArgument(f"container {name!r}: {e}") from None
        if container.log_path:
            os.makedirs(os.path.dirname(container.log_path), exist_ok=True)
        return user, spec

    @staticmethod
    def _prepare_mounts(container: Container, rootfs_dir: Path) -> None:
        for m in container.config.mounts:
            if m.host_path and m.image is None and not os.path.exists(m.host_path):
                os.makedirs(m.host_path, exist_ok=True)  # as kubelet expects (hostPath dirs)
            if m.host_path and m.image is None:
                directory = os.path.isdir(m.host_path)
                rootfs.make_mount_target(rootfs_dir, m.container_path, directory=directory)
        for target in POD_FILE_TARGETS:
            rootfs.make_mount_target(rootfs_dir, target, directory=False)

    async def process_spec(self, container: Container, cmd: Sequence[str]) -> dict[str, Any]:
        """An exec's process: the container's own (user, env, cwd, capabilities) running
        ``cmd``."""
        text = await asyncio.to_thread((self.bundle(container.id) / "config.json").read_text)
        process = dict(json.loads(text)["process"], args=list(cmd))
        process.pop("consoleSize", None)
        return process

    # -- remove ------------------------------------------------------------------------
    async def remove(self, cid: str) -> None:
        """Unmount the rootfs, remove the bundle and the writable layer. Idempotent; the
        runtime's own state is the caller's."""
        bundle = self.bundle(cid)
        await rootfs.unmount(bundle / "rootfs")

        def clean() -> None:
            usernsfs.unstage_volumes(bundle)  # before the rmtree: never into a volume
            shutil.rmtree(bundle, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.layer_dir(cid))

        await asyncio.to_thread(clean)


class Bundles(BundleLayout):
    """A handler's bundles whose containers run under conmon (see the module's notes)."""

    def __init__(
        self,
        *,
        root: Path,
        layers_root: Path,
        lowers: Callable[[str], list[str] | None],
        conmon: Conmon,
        host: oci.HostFacts,
    ) -> None:
        super().__init__(root=root, layers_root=layers_root, lowers=lowers, host=host)
        self.conmon = conmon

    @property
    def exits(self) -> Path:
        return self.root / "exits"

    def make_dirs(self) -> None:
        super().make_dirs()
        for d in (self.exits, Path(self.conmon.socket_dir)):
            d.mkdir(parents=True, exist_ok=True)

    async def supervise(self, container: Container, bundle: Path) -> int:
        """Run conmon, which runs the runtime's ``create``; the container's pid."""
        cfg = container.config
        try:
            return await self.conmon.create(
                container.id,
                cfg.metadata.name,
                bundle,
                self.log_path(container),
                tty=cfg.tty,
                stdin=cfg.stdin,
                stdin_once=cfg.stdin_once,
                exit_dir=self.exits,
            )
        except ConmonError as e:
            raise FailedPrecondition(f"failed to create container: {e}") from None
        finally:
            # The runtime's create has made its own copies of staged volume mounts.
            await asyncio.to_thread(usernsfs.unstage_volumes, bundle)

    # -- run ---------------------------------------------------------------------------
    def exit_info(self, cid: str) -> ExitInfo | None:
        return self.conmon.exit_info(cid, self.bundle(cid), self.exits)

    def supervised(self, cid: str) -> bool:
        """Whether the container's conmon still runs (so the container does, or its exit
        is being written)."""
        return self.conmon.supervising(cid, self.bundle(cid))

    async def wait(self, cid: str) -> ExitStatus:
        return exit_status(await self.conmon.wait_exit(cid, self.bundle(cid), self.exits))

    async def exec_sync(
        self,
        container: Container,
        process: dict[str, Any],
        timeout: float | None,
        limit: int,
        *,
        workdir: Path,
        on_timeout: Callable[[], Any] | None = None,
    ) -> ExecResult:
        """Run ``process`` through conmon; DeadlineExceeded on timeout (after
        ``on_timeout``, for runtimes whose exec'd process outlives conmon's kill)."""
        try:
            done = await self.conmon.exec_sync(
                container.id, process, timeout=timeout, workdir=workdir, limit=limit
            )
        except ConmonError as e:
            raise FailedPrecondition(str(e)) from None
        if done.timed_out:
            if on_timeout is not None:
                await on_timeout()
            cmd = process.get("args")
            raise DeadlineExceeded(f"command {cmd!r} timed out after {timeout:g}s")
        return ExecResult(done.exit_code, done.stdout, done.stderr)

    # -- streaming -----------------------------------------------------------------------
    def sessions(self, cid: str) -> Path:
        """The container's exec session directories live here."""
        return self.bundle(cid) / "sessions"

    async def exec_session(
        self,
        container: Container,
        process: dict[str, Any],
        stdio: Stdio,
        *,
        marker: str = "",
        kill: execattach.Killer = execattach.kill_by_pidfile,
    ) -> Session:
        """Run ``process`` for a streaming client under a conmon of its own (``marker``:
        an empty file to put in the session directory for the runtime's wrapper)."""
        directory = self.sessions(container.id) / secrets.token_hex(12)

        def prepare() -> execattach.SessionFiles:
            sf = execattach.prepare(directory, process)
            if marker:
                (directory / marker).touch()
            return sf

        sf = await asyncio.to_thread(prepare)
        try:
            return await self.conmon.exec_attach(
                container.id, sf, tty=stdio.tty, stdin=stdio.stdin, kill=kill
            )
        except ConmonError as e:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise StreamStartError(str(e)) from None

    async def attach_session(self, container: Container) -> Session:
        """The container's own stdio, through its conmon's attach socket."""
        cid = container.id

        async def wait() -> int:
            return (await self.wait(cid)).exit_code

        try:
            return await self.conmon.attach(self.bundle(cid), tty=container.config.tty, wait=wait)
        except OSError as e:
            raise StreamStartError(f"cannot attach to container {cid}: {e.strerror or e}") from None

    def log_path(self, container: Container) -> str:
        """Where conmon writes the container's CRI log."""
        return container.log_path or str(self.bundle(container.id) / "ctr.log")

    async def reopen_log(self, container: Container) -> None:
        """Have conmon reopen the log; returns once the new file exists."""
        try:
            await self.conmon.reopen_log(self.bundle(container.id), self.log_path(container))
        except ConmonError as e:
            raise FailedPrecondition(str(e)) from None

    async def remove(self, cid: str) -> None:
        """The layout's removal plus conmon's files outside the bundle. Idempotent."""
        await super().remove(cid)
        await asyncio.to_thread(self.conmon.remove, cid, self.exits)
