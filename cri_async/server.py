"""One CRI server: prepares the host, serves the CRI socket, shuts down cleanly (the
objects it runs are built by ``compose``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import time
from pathlib import Path

from grpclib._typing import IServable
from grpclib.server import Server as GRPCServer

from cri_async import __version__, criu, files, linux, observe
from cri_async.compose import BackendFactory, build_image_store, build_streaming
from cri_async.config import Config
from cri_async.core.context import Limits
from cri_async.core.errors import Unavailable
from cri_async.core.images import FilesystemUsage
from cri_async.core.model import ContainerState, NodeNetwork
from cri_async.core.runtime import Runtime
from cri_async.metrics import StateSources
from cri_async.monitor.hostprep import prepare_host
from cri_async.monitor.reaper import Reaper, become_subreaper, use_pidfd_child_watcher
from cri_async.network.cni import CNI
from cri_async.network.pins import NamespacePinner
from cri_async.services.admin import AdminService
from cri_async.services.image import ImageService
from cri_async.services.limits import BoundedServer
from cri_async.services.runtime import RuntimeService
from cri_async.stats.cache import StatsCache
from cri_async.store.db import SQLiteStore

log = logging.getLogger("cri_async.server")


def prepare_socket_path(path: Path) -> None:
    """Create parent dirs; replace a stale socket file only if nothing listens on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise Unavailable(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise Unavailable(f"another server is listening on {path}")


class Server:
    """One CRI server: ``await start()``, then ``await stop()`` (or ``async with``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rpc_timeout = config.server.rpc_timeout
        self.max_request_bytes = config.server.max_request_bytes
        self.socket_path = Path(config.server.socket)
        self.store = SQLiteStore(config.db_path, sync=config.state.sync)
        self.observer = observe.build(config)  # metrics and tracing; free when both are off
        self.images = build_image_store(
            config,
            self.store,
            self._images_in_use,
            self._images_busy,
            observer=self.observer,
        )
        self.real = any(h.backend != "fake" for h in config.runtimes.values())
        self.cni = (
            CNI(
                config.network.conf_dirs,
                config.network.bin_dirs,
                str(Path(config.state.run_root) / "cni" / "cache"),
                timeout=config.network.plugin_timeout,
                observer=self.observer,
            )
            if self.real
            else None
        )
        self._cni_watch: asyncio.Task[None] | None = None
        self.reaper = Reaper() if self.real else None
        node = NodeNetwork()
        self.pinner = NamespacePinner(Path(config.state.run_root) / "ns")
        factory = BackendFactory(
            config,
            self.images,
            pinner=self.pinner,
            cni=self.cni,
            node=node,
            reaper=self.reaper,
            observer=self.observer,
        )
        self.backends = factory.build()
        self.runtime = Runtime(
            self.store,
            self.backends,
            self.images,
            default_handler=config.runtime.default_handler,
            cgroup_driver=config.runtime.cgroup_driver,
            limits=Limits(cleanup_timeout=config.runtime.cleanup_timeout),
            event_queue=config.runtime.event_queue_size,
            info={"version": __version__, "socket": str(self.socket_path)},
            stats=StatsCache(remote=factory.shim_stats()) if self.real else None,
            network_status=self.cni.status if self.cni is not None else None,
            node=node,
            checkpoint_unsupported=criu.unsupported_reason,
        )
        self.streaming, self.streaming_service = build_streaming(config, self.runtime)
        ctx = self.runtime.ctx
        self.observer.metrics.watch_state(
            StateSources(
                tuple(config.runtimes),
                ctx.sandboxes.live,
                ctx.containers.live,
                ctx.events,
                ctx.stats,
            )
        )
        self._grpc: GRPCServer | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = asyncio.Event()

    def _container_fs(self) -> list[FilesystemUsage]:
        """Writable layers' usage, summed from the stats cache's periodic walks."""
        cache = self.runtime.ctx.stats
        if cache is None:
            return []
        layers = [s.writable_layer for s in cache.containers() if s.writable_layer is not None]
        return [
            FilesystemUsage(
                timestamp=max((w.timestamp for w in layers), default=time.time_ns()),
                mountpoint=str(Path(self.config.state.root) / "containers"),
                used_bytes=sum(w.used_bytes for w in layers),
                inodes_used=sum(w.inodes_used for w in layers),
            )
        ]

    def _images_in_use(self) -> set[str]:
        return {c.image_id for c in self.runtime.ctx.containers}

    def _images_busy(self) -> set[str]:
        active = (ContainerState.CREATED, ContainerState.RUNNING)
        return {c.image_id for c in self.runtime.ctx.containers if c.state in active}

    # Tracker protocol (services/rpc.py)
    def begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _prepare_host(self) -> None:
        """What real containers need from the host; idempotent, each change logged."""
        for change in prepare_host():
            log.info("host: %s", change)
        become_subreaper()
        # Bidirectional/host-to-container mount propagation needs a shared root mount;
        # systemd makes / rshared at boot, this machine's init does not.
        root = next((m for m in linux.mountinfo() if m[0] == "/"), None)
        if root is not None:
            linux.mount("none", "/", None, linux.MS_REC | linux.MS_SHARED)

    async def start(self) -> None:
        for root in (self.config.state.root, self.config.state.run_root):
            await asyncio.to_thread(files.private_dir, Path(root))
        if self.reaper is not None:
            await asyncio.to_thread(self._prepare_host)
            use_pidfd_child_watcher()
            self.reaper.start()
        await self.store.open()
        try:
            if self.cni is not None:
                await self.cni.reload()
                self._cni_watch = asyncio.create_task(self.cni.watch(), name="cni-watch")
            await self.runtime.start()
            await self.observer.start()
            await self.streaming.start()  # URLs need its address before any RPC answers
            services: list[IServable] = [
                RuntimeService(
                    self.runtime, self, self.config.runtime.cgroup_driver, self.streaming_service
                ),
                ImageService(self.images, self, self._container_fs),
                AdminService(self.images, self),
            ]
            prepare_socket_path(self.socket_path)
            self._grpc = BoundedServer(
                services, max_concurrent_streams=self.config.server.max_concurrent_streams
            )
            old_umask = os.umask(0o777 ^ self.config.server.mode)
            try:
                await self._grpc.start(path=str(self.socket_path))
            finally:
                os.umask(old_umask)
            os.chmod(self.socket_path, self.config.server.mode)
        except BaseException:
            await self.streaming.close()
            await self.observer.close()
            await self.runtime.close()
            await self.images.close()
            await self.store.close()
            raise
        log.info("cri-async %s serving on unix://%s", __version__, self.socket_path)

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop accepting, let in-flight RPCs finish (bounded), then flush and close."""
        grpc = self._grpc
        if grpc is None or self._stopped.is_set():
            return
        listener = grpc._server  # grpclib keeps the asyncio server private
        if listener is not None:
            listener.close()
        self.runtime.events.close()
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.server.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown: cancelling %d RPCs still running", self._inflight)
        grpc.close()
        await grpc.wait_closed()
        await self.streaming.close()  # ends sessions; exec'd processes are killed
        await self.runtime.close(self.config.server.shutdown_timeout)
        if self._cni_watch is not None:
            self._cni_watch.cancel()
        await self.images.close()
        await self.store.close()
        if self.reaper is not None:
            self.reaper.close()
        await self.observer.close()
        self.socket_path.unlink(missing_ok=True)
        self._stopped.set()
        log.info("cri-async stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
