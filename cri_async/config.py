"""Configuration: TOML into frozen dataclasses, every key validated and documented.

``cri-async config --default`` prints DEFAULT_TOML, which is the documentation of every key;
a test checks that it parses to exactly ``Config()``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

BACKENDS = ("runc", "crun", "youki", "runsc", "fake")
OCI_BACKENDS = ("runc", "crun", "youki")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A bad config file; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    socket: str = "/run/cri-async/cri-async.sock"
    socket_mode: str = "0660"
    rpc_timeout: float = 240.0
    shutdown_timeout: float = 10.0
    uvloop: bool = False

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
    infra_binary: str = ""  # runsc only: the pod's pause binary; empty: catatonit or busybox

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"backend: {self.backend!r} is not available (available: {', '.join(BACKENDS)})"
            )
        _choice("platform", self.platform, ("ptrace", "kvm", "systrap"))
        _choice("network", self.network, ("host", "sandbox"))


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
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    state: StateConfig = field(default_factory=StateConfig)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    runtimes: dict[str, HandlerConfig] = field(
        default_factory=lambda: {
            "": HandlerConfig("runc"),
            "runc": HandlerConfig("runc"),
            "crun": HandlerConfig("crun"),
            "youki": HandlerConfig("youki"),
            "runsc": HandlerConfig("runsc"),
        }
    )
    images: ImagesConfig = field(default_factory=ImagesConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    network: NetworkSection = field(default_factory=NetworkSection)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    fake: FakeConfig = field(default_factory=FakeConfig)

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


DEFAULT_TOML = """\
# cri-async configuration. Every key is shown with its default value.
# Unknown keys and bad values are rejected at startup with a message naming the key.

[server]
# The CRI gRPC endpoint (kubelet: --container-runtime-endpoint=unix://<socket>).
socket = "/run/cri-async/cri-async.sock"
# Permissions of the socket file (octal).
socket_mode = "0660"
# Upper bound in seconds for any RPC; a shorter client deadline wins.
rpc_timeout = 240.0
# On SIGTERM/SIGINT: how long in-flight RPCs may finish before they are cancelled.
shutdown_timeout = 10.0
# Run the event loop on uvloop (needs the "uvloop" extra installed).
uvloop = false

[log]
# debug | info | warning | error. At debug every RPC is logged with its duration.
level = "info"
# text | json (one JSON object per line).
format = "text"

[state]
# Durable state: the SQLite database (state.db) and, later, content and snapshots.
root = "/var/lib/cri-async"
# Runtime state that must not outlive a reboot (backend roots, bundles).
run_root = "/run/cri-async"
# full: fsync every commit (survives power loss); normal: survives a crash of cri-async.
sync = "full"

[runtime]
# The handler used when a pod names no RuntimeClass handler.
default_handler = ""
# cgroupfs | systemd, reported to kubelet by the RuntimeConfig RPC.
cgroup_driver = "cgroupfs"
# Events buffered per GetContainerEvents subscriber; a subscriber that falls this far
# behind is disconnected rather than slowing the runtime down.
event_queue_size = 1024
# Seconds allowed for each cleanup step when a create fails or is cancelled.
cleanup_timeout = 30.0
# The conmon binary that supervises each container (logs, exit code, attach).
conmon = "conmon"

# One table per RuntimeClass handler: [runtimes."<handler>"]. "" is the default handler.
# backend: runc | crun | youki (real containers under conmon), runsc (gVisor: one sandbox
#          per pod, containers join it) or fake (simulated containers, no root needed).
# root:    the backend's state directory; empty means <state.run_root>/<backend>/<handler>.
# binary:  the OCI runtime binary; empty means the backend's name, found in PATH.
# platform, network, infra_binary: runsc only. platform: ptrace (kvm hangs on this kind
#          of VM); network: host (gVisor uses the pod netns' kernel stack) or sandbox
#          (gVisor's netstack); infra_binary: the pod's pause process (empty: catatonit,
#          else busybox-static).
# A handler whose binary is missing is reported not ready by Status and refused by
# RunPodSandbox; the server still starts.
[runtimes.""]
backend = "runc"
root = ""
binary = ""
platform = "ptrace"
network = "host"
infra_binary = ""

[runtimes.runc]
backend = "runc"
root = ""
binary = ""
platform = "ptrace"
network = "host"
infra_binary = ""

[runtimes.crun]
backend = "crun"
root = ""
binary = ""
platform = "ptrace"
network = "host"
infra_binary = ""

# youki is not packaged by Debian 12; this handler reports not ready until it is installed.
[runtimes.youki]
backend = "youki"
root = ""
binary = ""
platform = "ptrace"
network = "host"
infra_binary = ""

[runtimes.runsc]
backend = "runsc"
root = ""
binary = ""
platform = "ptrace"
network = "host"
infra_binary = ""

[images]
# registry: pull from OCI registries into <state.root>/content and <state.root>/snapshots.
# fake: serve the [[fake.images]] catalog below without any network (for tests, demos).
backend = "registry"
# Images that kubelet's image garbage collection must never remove (RemoveImage refuses).
pinned = ["registry.k8s.io/pause:3.10"]
# os/arch[/variant] to pick from multi-platform images; empty means this host's.
platform = ""
# Layers downloaded at once per node.
max_concurrent_downloads = 3
# Seconds without a single byte after which a download fails (no limit on total time).
stall_timeout = 60.0
# Limits against decompression bombs and runaway images; a pull or import beyond one fails
# with RESOURCE_EXHAUSTED naming it and leaves nothing behind. The defaults fit the largest
# real images (CUDA and ML bases: a few layers of 5-15 GiB, 20-40 GiB in all).
# Uncompressed bytes one layer may unpack to (32 GiB).
max_layer_bytes = 34359738368
# Uncompressed bytes all layers of one image may unpack to (64 GiB).
max_image_bytes = 68719476736
# Tar entries (files, directories, links, whiteouts...) one layer may hold.
max_layer_entries = 1000000
# Bytes a pull must leave free on the filesystem of <state.root> (1 GiB); checked before
# the layers download, from their sizes in the manifest. 0 turns the check off.
min_free_bytes = 1073741824
# Layers one container's overlay mount stacks at most (overlayfs allows 500; fewer are
# stacked when their paths under <state.root> would not fit in 48 KiB, for runc). The
# deepest layers of an image with more are merged into one snapshot when it is pulled.
max_mount_layers = 500

[registry]
# A containerd-style hosts directory: <config_path>/<host>/hosts.toml (and _default/),
# with server, [host."<url>"] capabilities, skip_verify, ca, header. Empty: not used.
config_path = ""
# A Docker config.json with {"auths": {"<host>": {"auth": "<base64 user:pass>"}}}, used
# when a PullImage request carries no credentials. Empty: none.
credentials_file = ""
# Hosts reached with TLS but no certificate verification, falling back to plain HTTP.
# Loopback hosts (localhost, 127.0.0.0/8, ::1) use plain HTTP unless [registry.ca]
# names them, as containerd does.
insecure = []

# CA certificates (PEM files) to trust per registry host, besides the system's. A host
# listed here is reached over HTTPS even on loopback:
# [registry.ca]
# "registry.internal:5000" = ["/etc/cri-async/certs/internal-ca.pem"]
[registry.ca]

# Mirrors per registry host, tried in order before the host itself:
# [registry.mirrors]
# "docker.io" = ["https://mirror.example.com"]
[registry.mirrors]

[network]
# CNI: the first valid .conflist/.conf/.json (by file name) in these directories is the pod
# network; a config added later makes the node NetworkReady without a restart.
# `cri-async config --cni-default` prints a bridge network (`make run` installs it into
# /etc/cni/net.d when that directory has no config).
conf_dirs = ["/etc/cni/net.d"]
# Where plugin binaries are looked up (Debian's containernetworking-plugins: /usr/lib/cni).
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
# Seconds one plugin invocation may take.
plugin_timeout = 60.0
# Seconds a pod's network teardown (CNI DEL of the whole chain) may take when a pod stops or
# is removed; past it the removal goes on and the teardown is retried later.
teardown_timeout = 120.0

[streaming]
# The Exec/Attach/PortForward server (HTTP/1.1 upgraded to SPDY/3.1 or WebSocket). The
# RPCs answer URLs to it; kubelet proxies kubectl's sessions there, crictl dials directly.
# Listen address; the default keeps sessions on this node.
address = "127.0.0.1"
# Listen port; 0 picks a free one (the URLs carry the port actually bound).
port = 0
# Host put into the URLs; empty: the listen address (127.0.0.1 for a wildcard address).
advertise_address = ""
# Seconds without any traffic after which a session's connection is closed.
idle_timeout = 14400.0
# Seconds a client may take to open all the streams of a session.
stream_creation_timeout = 30.0
# Serve HTTPS. Without the two files, a self-signed certificate is made at startup (as
# containerd does); note that clients which verify certificates refuse it.
tls = false
tls_cert_file = ""
tls_key_file = ""

# The images the fake backend's simulated registry serves ([[fake.images]] per image):
# ref, size (bytes), entrypoint, cmd, env, user, working_dir, stop_signal.
[[fake.images]]
ref = "docker.io/library/busybox:latest"
size = 2167176
entrypoint = []
cmd = ["sh"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = ""
working_dir = ""
stop_signal = ""

[[fake.images]]
ref = "docker.io/library/busybox:1.36"
size = 2167176
entrypoint = []
cmd = ["sh"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = ""
working_dir = ""
stop_signal = ""

[[fake.images]]
ref = "docker.io/library/nginx:latest"
size = 67000000
entrypoint = ["/docker-entrypoint.sh"]
cmd = ["nginx", "-g", "daemon off;"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = ""
working_dir = ""
stop_signal = "SIGQUIT"

[[fake.images]]
ref = "registry.k8s.io/pause:3.10"
size = 320368
entrypoint = []
cmd = ["/pause"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = "65535"
working_dir = ""
stop_signal = ""
"""
