"""The composition root: builds every adapter from config, complete, and hands them to the
core. Nothing here runs; ``server.py`` starts and stops what this builds."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from cri_async.backends.bundles import BundleLayout, Bundles
from cri_async.backends.fake.backend import FakeBackend
from cri_async.backends.ocicli import RuntimeCLI
from cri_async.backends.runc import RuncBackend
from cri_async.backends.runsc import RunscBackend
from cri_async.backends.runschold import RunscCLI
from cri_async.backends.shimv2.backend import ShimBackend, ShimStatsSource
from cri_async.backends.shimv2.hub import EventHub
from cri_async.backends.shimv2.settings import shim_settings
from cri_async.backends.specinputs import host_facts
from cri_async.config import Config, ConfigError
from cri_async.core.images import ImageStore
from cri_async.core.model import NodeNetwork
from cri_async.core.ports import OCIRuntime, StateStore
from cri_async.core.runtime import Runtime
from cri_async.core.streaming import RuntimeStreams
from cri_async.monitor.conmon import Conmon
from cri_async.monitor.reaper import Reaper
from cri_async.network.cni import CNI
from cri_async.network.pins import NamespacePinner
from cri_async.observe import NO_OBSERVER, Observer
from cri_async.oci import spec as oci
from cri_async.pods.host import PodHost
from cri_async.registry.auth import load_credentials_file
from cri_async.registry.client import RegistryClient
from cri_async.registry.fake_store import CatalogImage, FakeImageStore
from cri_async.registry.hosts import HostResolver
from cri_async.registry.limits import UnpackLimits
from cri_async.registry.manifest import Platform, host
from cri_async.registry.store import OCIImageStore
from cri_async.streaming.server import StreamingServer
from cri_async.streaming.service import StreamingService


def pause_argv() -> list[str] | None:
    """The pause program of pods that share one PID namespace (catatonit, as podman's)."""
    for name in ("catatonit", "/usr/libexec/podman/catatonit"):
        path = shutil.which(name)
        if path:
            return [path, "-P"]
    return None


class BackendFactory:
    """Builds the backend of each configured RuntimeClass handler; the parts they share
    (namespace pinner, CNI, reaper, node network, host facts) are built once."""

    def __init__(
        self,
        config: Config,
        images: ImageStore,
        *,
        pinner: NamespacePinner,
        cni: CNI | None,
        node: NodeNetwork,
        reaper: Reaper | None,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.config = config
        self.observer = observer
        self.images = images
        self.pinner = pinner
        self.cni = cni
        self.node = node
        self.reaper = reaper
        self._host: oci.HostFacts | None = None
        self._shims: list[ShimBackend] = []
        self._events: EventHub | None = None

    @property
    def host(self) -> oci.HostFacts:
        if self._host is None:
            self._host = host_facts()
        return self._host

    def build(self) -> dict[str, OCIRuntime]:
        return {name: self._build(name) for name in self.config.runtimes}

    def shim_stats(self) -> ShimStatsSource | None:
        """After ``build``: where the stats cache reads the containers of shim handlers
        with ``shim_stats`` (None without any)."""
        source = ShimStatsSource(self._shims)
        return source if any(b.settings.shim_stats for b in self._shims) else None

    def _pods(self, root: Path, *, host_pidns: bool = True) -> PodHost:
        return PodHost(
            root / "pods",
            self.pinner,
            cni=self.cni,
            node=self.node,
            reaper=self.reaper,
            pause=pause_argv if host_pidns else None,
            teardown_timeout=self.config.network.teardown_timeout,
        )

    def _bundles(
        self, root: Path, cli: RuntimeCLI, runtime_path: str, facts: oci.HostFacts
    ) -> Bundles:
        assert isinstance(self.images, OCIImageStore)  # checked by _build
        config = self.config
        conmon = Conmon(
            config.runtime.conmon,
            runtime_path=runtime_path,
            runtime_args=cli.global_args(),
            # Attach sockets are reached as <dir>/<64-hex id>/attach, which must fit in
            # sun_path (108 bytes): keep it short and shared by all handlers.
            socket_dir=str(Path(config.state.run_root) / "s"),
            reaper=self.reaper,
            observer=self.observer,
            backend=cli.name,
        )
        return Bundles(
            root=root,
            layers_root=Path(config.state.root) / "containers",
            lowers=self.images.lower_dirs,
            conmon=conmon,
            host=facts,
        )

    def _build(self, name: str) -> OCIRuntime:
        h = self.config.runtimes[name]
        root = self.config.handler_root(name)
        if h.backend == "fake":
            return FakeBackend(name, root)
        if not isinstance(self.images, OCIImageStore):
            raise ConfigError(
                f'runtimes."{name}": the {h.backend} backend needs images.backend = "registry"'
            )
        if h.backend == "shimv2":
            return self._shimv2(name, root)
        binary = shutil.which(h.binary or h.backend) or h.binary or h.backend
        if h.backend == "runsc":
            runsc = RunscCLI(
                binary,
                str(root / "state"),
                extra_args=(f"--platform={h.platform}", f"--network={h.network}", "--oci-seccomp"),
                observer=self.observer,
            )
            wrapper = root / "conmon-runtime"
            return RunscBackend(
                name,
                cli=runsc,
                conmon_binary=self.config.runtime.conmon,
                # gVisor keeps its containers' processes in the sandbox: no host PID ns.
                pods=self._pods(root, host_pidns=False),
                bundles=self._bundles(root, runsc, str(wrapper), self.host),
                wrapper=wrapper,
                platform=h.platform,
                network=h.network,
                infra_binary=h.infra_binary,
                reaper=self.reaper,
            )
        cli = RuntimeCLI(binary, str(root / "state"), observer=self.observer)
        return RuncBackend(
            name,
            kind=h.backend,
            cli=cli,
            conmon_binary=self.config.runtime.conmon,
            pods=self._pods(root),
            bundles=self._bundles(root, cli, binary, self.host),
        )

    def _shimv2(self, name: str, root: Path) -> ShimBackend:
        """A containerd shim handler. All of them publish to one events endpoint."""
        assert isinstance(self.images, OCIImageStore)  # checked by _build
        if self._events is None:
            self._events = EventHub(Path(self.config.state.run_root) / "shimv2" / "events.sock")
        settings = shim_settings(self.config.runtimes[name], root)
        backend = ShimBackend(
            name,
            settings=settings,
            root=root,
            hub=self._events,
            # A sandboxed runtime (Kata's VM, gVisor) keeps the pod's PID namespace itself.
            pods=self._pods(root, host_pidns=not settings.sandbox_task),
            layout=BundleLayout(
                root=root,
                layers_root=Path(self.config.state.root) / "containers",
                lowers=self.images.lower_dirs,
                host=self.host,
            ),
        )
        self._shims.append(backend)
        return backend


def build_streaming(config: Config, runtime: Runtime) -> tuple[StreamingServer, StreamingService]:
    """The streaming server (sessions land in the runtime's backends) and the service that
    validates Exec/Attach/PortForward and issues its URLs."""
    server = StreamingServer(RuntimeStreams(runtime.ctx), config.streaming)
    return server, StreamingService(runtime.containers, runtime.sandboxes, server)


def catalog(config: Config) -> list[CatalogImage]:
    return [
        CatalogImage(
            ref=i.ref,
            size=i.size,
            entrypoint=tuple(i.entrypoint),
            cmd=tuple(i.cmd),
            env=tuple(i.env),
            user=i.user,
            working_dir=i.working_dir,
            stop_signal=i.stop_signal,
        )
        for i in config.fake.images
    ]


def build_image_store(
    config: Config,
    store: StateStore,
    in_use: Callable[[], set[str]],
    busy: Callable[[], set[str]] = set,
    *,
    observer: Observer = NO_OBSERVER,
) -> ImageStore:
    """``in_use``: images of any container (their layers stay); ``busy``: images of created
    or running containers (RemoveImage refuses them)."""
    images = config.images
    if images.backend == "fake":
        return FakeImageStore(
            store, catalog(config), images.pinned, mountpoint=config.state.root, busy=busy
        )
    reg = config.registry
    client = RegistryClient(
        HostResolver(
            config_path=reg.config_path,
            mirrors={h: tuple(u) for h, u in reg.mirrors.items()},
            insecure=frozenset(reg.insecure),
            ca={h: tuple(files) for h, files in reg.ca.items()},
        ),
        credentials=load_credentials_file(reg.credentials_file),
        stall_timeout=config.images.stall_timeout,
    )
    return OCIImageStore(
        store,
        Path(config.state.root),
        client,
        platform=Platform.parse(config.images.platform) if config.images.platform else host(),
        pinned=config.images.pinned,
        handlers=config.runtimes.keys(),
        max_downloads=config.images.max_concurrent_downloads,
        in_use=in_use,
        busy=busy,
        metrics=observer.metrics,
        tracer=observer.tracer,
        limits=UnpackLimits(
            layer_bytes=images.max_layer_bytes,
            image_bytes=images.max_image_bytes,
            layer_entries=images.max_layer_entries,
            min_free_bytes=images.min_free_bytes,
        ),
        max_lowers=images.max_mount_layers,
    )
