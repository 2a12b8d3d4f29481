"""Configuration: TOML into frozen dataclasses, every key validated and documented.

``cri-async config --default`` prints ``configtoml.default_toml()``, the documentation of
every key; a test checks that it parses to exactly ``Config()``, and docs/configuration.md is
generated from it.

The default RuntimeClass handlers are decided once per process, when the defaults are first
built: ``""`` plus one handler per OCI runtime whose binary is in PATH (``default_runtimes``).
A handler the operator configures by hand is kept even when its binary is missing; Status
then reports it not ready with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

BACKENDS = ("runc", "crun", "youki", "runsc", "shimv2", "fake")
OCI_BACKENDS = ("runc", "crun", "youki")
LOG_LEVELS = ("debug", "info", "warning", "error")
SHIM_OPTIONS = ("auto", "runc", "runtime", "none")
# containerd's namespace names (its identifiers package).
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
# A shim runtime type: dot-separated parts, the last two naming the binary.
_RUNTIME_TYPE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
# The handlers a default config has, each only when its binary is found in PATH.
KNOWN_HANDLERS = ("runc", "crun", "youki", "runsc")


class ConfigError(ValueError):
    """A bad config file; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    socket: str = "/run/cri-async/cri-async.sock"
    socket_mode: str = "0660"
    rpc_timeout: float = 240.0
    shutdown_timeout: float = 10.0
    uvloop: bool = False
    max_request_bytes: int = 16 << 20
    max_concurrent_streams: int = 1000

    def __post_init__(self) -> None:
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            raise ConfigError(f"server.socket_mode: {self.socket_mode!r} is not octal") from None
        if not 0 <= mode <= 0o777:
            raise ConfigError(f"server.socket_mode: {self.socket_mode!r} is out of range")
        if not self.socket.startswith("/"):
            raise ConfigError(f"server.socket: {self.socket!r} must be an absolute path")
        if len(self.socket.encode()) > 107:
            raise ConfigError(f"server.socket: {self.socket!r} is longer than sun_path allows")
        _positive("server.rpc_timeout", self.rpc_timeout)
        _positive("server.shutdown_timeout", self.shutdown_timeout)
        if not 1024 <= self.max_request_bytes <= 0xFFFFFFFF:
            raise ConfigError(  # the gRPC length prefix is 32 bits
                f"server.max_request_bytes: {self.max_request_bytes} is not 1024-4294967295"
            )
        if not 1 <= self.max_concurrent_streams <= 0x7FFFFFFF:
            raise ConfigError(
                f"server.max_concurrent_streams: {self.max_concurrent_streams} is not 1-2147483647"
            )

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"

    def __post_init__(self) -> None:
        _choice("log.level", self.level, LOG_LEVELS)
        _choice("log.format", self.format, ("text", "json"))


@dataclass(frozen=True)
class StateConfig:
    root: str = "/var/lib/cri-async"
    run_root: str = "/run/cri-async"
    sync: str = "full"

    def __post_init__(self) -> None:
        _choice("state.sync", self.sync, ("full", "normal"))
        for key in ("root", "run_root"):
            if not getattr(self, key).startswith("/"):
                raise ConfigError(f"state.{key}: must be an absolute path")


@dataclass(frozen=True)
class RuntimeSection:
    default_handler: str = ""
    cgroup_driver: str = "cgroupfs"
    event_queue_size: int = 1024
    cleanup_timeout: float = 30.0
    conmon: str = "conmon"

    def __post_init__(self) -> None:
        _choice("runtime.cgroup_driver", self.cgroup_driver, ("cgroupfs", "systemd"))
        if self.event_queue_size < 1:
            raise ConfigError("runtime.event_queue_size: must be at least 1")
        _positive("runtime.cleanup_timeout", self.cleanup_timeout)


@dataclass(frozen=True)
class HandlerConfig:
    backend: str = "runc"
    root: str = ""  # empty: <state.run_root>/<backend>/<handler or "default">
    binary: str = ""  # empty: the backend's name, looked up in PATH
    platform: str = "ptrace"  # runsc only
    network: str = "host"  # runsc only: host | sandbox
    infra_binary: str = ""  # runsc, shimv2 with sandbox_task: the pod's pause binary
    runtime_type: str = ""  # shimv2 only: io.containerd.runc.v2, ... or a shim's path
    shim_namespace: str = "cri-async"  # shimv2 only
    shim_options: str = "auto"  # shimv2 only: auto | runc | runtime | none
    config_path: str = ""  # shimv2 only: runtime options' config_path
    options_type_url: str = ""  # shimv2 only: runtime options' type_url
    sandbox_task: bool = False  # shimv2 only: an infra task per pod (Kata, gVisor)
    shim_stats: bool = False  # shimv2 only: container stats from the shim's Stats
    shim_timeout: float = 30.0  # shimv2 only: each task API call, shim start and delete

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"backend: {self.backend!r} is not available (available: {', '.join(BACKENDS)})"
            )
        _choice("platform", self.platform, ("ptrace", "kvm", "systrap"))
        _choice("network", self.network, ("host", "sandbox"))
        _choice("shim_options", self.shim_options, SHIM_OPTIONS)
        _positive("shim_timeout", self.shim_timeout)
        if not _NAMESPACE.fullmatch(self.shim_namespace) or len(self.shim_namespace) > 76:
            raise ConfigError(
                f"shim_namespace: {self.shim_namespace!r} is not a containerd namespace "
                "(letters and digits, single '.', '_' or '-' between them, at most 76)"
            )
        if self.backend == "shimv2":
            if not self.runtime_type:
                raise ConfigError(
                    'runtime_type: the shimv2 backend needs one, e.g. "io.containerd.runc.v2"'
                )
            if not self.runtime_type.startswith("/") and not _RUNTIME_TYPE.fullmatch(
                self.runtime_type
            ):
                raise ConfigError(
                    f"runtime_type: {self.runtime_type!r} is neither a name like "
                    "'io.containerd.kata.v2' nor an absolute path to a shim binary"
                )


@dataclass(frozen=True)
class NetworkSection:
    conf_dirs: list[str] = field(default_factory=lambda: ["/etc/cni/net.d"])
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    plugin_timeout: float = 60.0
    teardown_timeout: float = 120.0

    def __post_init__(self) -> None:
        _positive("network.plugin_timeout", self.plugin_timeout)
        _positive("network.teardown_timeout", self.teardown_timeout)
        if not self.conf_dirs or not self.bin_dirs:
            raise ConfigError("network: conf_dirs and bin_dirs must not be empty")


@dataclass(frozen=True)
class FakeImageConfig:
    ref: str
    size: int = 1 << 20
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=lambda: ["sh"])
    env: list[str] = field(
        default_factory=lambda: [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    )
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""


def _default_fake_images() -> list[FakeImageConfig]:
    return [
        FakeImageConfig("docker.io/library/busybox:latest", size=2_167_176),
        FakeImageConfig("docker.io/library/busybox:1.36", size=2_167_176),
        FakeImageConfig(
            "docker.io/library/nginx:latest",
            size=67_000_000,
            entrypoint=["/docker-entrypoint.sh"],
            cmd=["nginx", "-g", "daemon off;"],
            stop_signal="SIGQUIT",
        ),
        FakeImageConfig("registry.k8s.io/pause:3.10", size=320_368, cmd=["/pause"], user="65535"),
    ]


@dataclass(frozen=True)
class FakeConfig:
    images: list[FakeImageConfig] = field(default_factory=_default_fake_images)


@dataclass(frozen=True)
class ImagesConfig:
    backend: str = "registry"
    pinned: list[str] = field(default_factory=lambda: ["registry.k8s.io/pause:3.10"])
    platform: str = ""
    max_concurrent_downloads: int = 3
    stall_timeout: float = 60.0
    max_layer_bytes: int = 32 << 30
    max_image_bytes: int = 64 << 30
    max_layer_entries: int = 1_000_000
    min_free_bytes: int = 1 << 30
    max_mount_layers: int = 500

    def __post_init__(self) -> None:
        _choice("images.backend", self.backend, ("registry", "fake"))
        for key in ("max_layer_bytes", "max_image_bytes", "max_layer_entries"):
            if getattr(self, key) < 1:
                raise ConfigError(f"images.{key}: must be at least 1")
        if self.min_free_bytes < 0:
            raise ConfigError("images.min_free_bytes: must not be negative")
        if not 2 <= self.max_mount_layers <= 500:
            raise ConfigError(
                "images.max_mount_layers: must be between 2 and 500 (overlayfs stacks at most"
                " 500 layers)"
            )
        if self.platform:
            parts = self.platform.split("/")
            if len(parts) not in (2, 3) or not all(parts):
                raise ConfigError(f"images.platform: {self.platform!r} is not os/arch[/variant]")
        if self.max_concurrent_downloads < 1:
            raise ConfigError("images.max_concurrent_downloads: must be at least 1")
        _positive("images.stall_timeout", self.stall_timeout)


@dataclass(frozen=True)
class RegistryConfig:
    config_path: str = ""
    credentials_file: str = ""
    insecure: list[str] = field(default_factory=list)
    ca: dict[str, list[str]] = field(default_factory=dict)
    mirrors: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for host, urls in self.mirrors.items():
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ConfigError(
                        f'registry.mirrors."{host}": {url!r} must start with http:// or https://'
                    )


@dataclass(frozen=True)
class StreamingConfig:
    address: str = "127.0.0.1"
    port: int = 0
    advertise_address: str = ""
    idle_timeout: float = 14400.0
    stream_creation_timeout: float = 30.0
    tls: bool = False
    tls_cert_file: str = ""
    tls_key_file: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"streaming.port: {self.port} is out of range 0-65535")
        if not self.address:
            raise ConfigError("streaming.address: must not be empty")
        _positive("streaming.idle_timeout", self.idle_timeout)
        _positive("streaming.stream_creation_timeout", self.stream_creation_timeout)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("streaming.tls_cert_file and tls_key_file go together")
        if self.tls_cert_file and not self.tls:
            raise ConfigError("streaming.tls_cert_file is set but streaming.tls is false")


@dataclass(frozen=True)
class MetricsConfig:
    address: str = ""  # host:port of the Prometheus endpoint; empty: off

    def __post_init__(self) -> None:
        if self.address:
            split_address(self.address, "metrics.address")


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str = ""  # OTLP/HTTP traces URL; empty: off
    sampling_ratio: float = 1.0
    service_name: str = "cri-async"

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"tracing.endpoint: {self.endpoint!r} must start with http:// or https://"
            )
        if not 0.0 <= self.sampling_ratio <= 1.0:
            raise ConfigError(
                f"tracing.sampling_ratio: must be between 0 and 1, got {self.sampling_ratio}"
            )
        if not self.service_name:
            raise ConfigError("tracing.service_name: must not be empty")


def split_address(address: str, key: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (host, port); port 0 picks a free port (tests).
    The message names ``key``."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: {address!r} is not host:port")
    return host, int(port)


def installed_runtimes(path: str | None = None) -> tuple[str, ...]:
    """The known OCI runtimes whose binary is in ``path`` (default: $PATH)."""
    return tuple(b for b in KNOWN_HANDLERS if shutil.which(b, path=path))


@functools.cache
def installed_at_first_use() -> tuple[str, ...]:
    return installed_runtimes()


def default_runtimes(installed: tuple[str, ...] | None = None) -> dict[str, HandlerConfig]:
    """``""`` (runc, else crun when only crun is installed) and one handler per installed
    runtime. With nothing installed ``""`` is still runc: Status says why it is not ready."""
    found = installed_at_first_use() if installed is None else installed
    default = "crun" if "crun" in found and "runc" not in found else "runc"
    return {
        "": HandlerConfig(default),
        **{b: HandlerConfig(b) for b in KNOWN_HANDLERS if b in found},
    }


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    state: StateConfig = field(default_factory=StateConfig)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    runtimes: dict[str, HandlerConfig] = field(default_factory=default_runtimes)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    network: NetworkSection = field(default_factory=NetworkSection)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    fake: FakeConfig = field(default_factory=FakeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def __post_init__(self) -> None:
        if self.runtime.default_handler not in self.runtimes:
            raise ConfigError(
                f"runtime.default_handler: {self.runtime.default_handler!r} has no "
                f'[runtimes."{self.runtime.default_handler}"] section'
            )

    def handler_root(self, name: str) -> Path:
        h = self.runtimes[name]
        if h.root:
            return Path(h.root)
        return Path(self.state.run_root) / h.backend / (name or "default")

    @property
    def db_path(self) -> Path:
        return Path(self.state.root) / "state.db"


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
        origin = get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        _, vt = get_args(tp)
        return {k: _convert(vt, v, f'{key}."{k}"') for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, bool, float) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"{prefix or 'config'}: {e}") from None
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix.split(".")[0]):
            raise ConfigError(f"{prefix}.{e}") from None
        raise


def parse(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    cfg: Config = _build(Config, data, "")
    return cfg


def load(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse(text)
