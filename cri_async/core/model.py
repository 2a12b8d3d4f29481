"""Domain records for pods, containers and their configuration.

These mirror the Linux parts of the CRI contract in plain frozen dataclasses so that
everything below ``services/`` can work (and be persisted) without protobuf. Windows-only
fields are not modelled: this runtime serves Linux nodes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Self

Labels = dict[str, str]


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


class Phase(enum.Enum):
    """Internal lifecycle of a record: CREATING rows are intents, rolled back after a crash."""

    CREATING = "creating"
    LIVE = "live"


class NamespaceMode(enum.Enum):
    POD = "pod"
    CONTAINER = "container"
    NODE = "node"
    TARGET = "target"


class Propagation(enum.Enum):
    PRIVATE = "private"
    HOST_TO_CONTAINER = "rslave"
    BIDIRECTIONAL = "rshared"


class ProfileType(enum.Enum):
    RUNTIME_DEFAULT = "runtime/default"
    UNCONFINED = "unconfined"
    LOCALHOST = "localhost"


class SupplementalGroupsPolicy(enum.Enum):
    MERGE = "merge"
    STRICT = "strict"


class Protocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


@dataclass(frozen=True, slots=True)
class IDMapping:
    host_id: int
    container_id: int
    length: int


@dataclass(frozen=True, slots=True)
class UserNamespace:
    mode: NamespaceMode = NamespaceMode.NODE
    uids: tuple[IDMapping, ...] = ()
    gids: tuple[IDMapping, ...] = ()

    @property
    def root(self) -> tuple[int, int]:
        """The host (uid, gid) of the namespace's root, which owns what the pod writes."""
        return _host_id(self.uids, 0), _host_id(self.gids, 0)


def _host_id(maps: tuple[IDMapping, ...], container_id: int) -> int:
    for m in maps:
        if m.container_id <= container_id < m.container_id + m.length:
            return m.host_id + container_id - m.container_id
    raise ValueError(f"id {container_id} is not mapped")


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: str = ""
    userns: UserNamespace | None = None


@dataclass(frozen=True, slots=True)
class SELinuxOptions:
    user: str = ""
    role: str = ""
    type: str = ""
    level: str = ""


@dataclass(frozen=True, slots=True)
class SecurityProfile:
    type: ProfileType = ProfileType.RUNTIME_DEFAULT
    localhost_ref: str = ""


@dataclass(frozen=True, slots=True)
class Capabilities:
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    add_ambient: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HugepageLimit:
    page_size: str
    limit: int


@dataclass(frozen=True, slots=True)
class Resources:
    """Linux resources; zero/empty means "not set" as on the wire."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: Labels = field(default_factory=dict)
    memory_swap_limit_in_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SandboxSecurity:
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    selinux: SELinuxOptions | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    privileged: bool = False
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None


@dataclass(frozen=True, slots=True)
class ContainerSecurity:
    capabilities: Capabilities | None = None
    privileged: bool = False
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    selinux: SELinuxOptions | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None


@dataclass(frozen=True, slots=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PortMapping:
    protocol: Protocol = Protocol.TCP
    container_port: int = 0
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class PodMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class ImageSpec:
    image: str = ""
    annotations: Labels = field(default_factory=dict)
    user_specified_image: str = ""
    runtime_handler: str = ""
    image_ref: str = ""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    metadata: PodMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Labels = field(default_factory=dict)
    annotations: Labels = field(default_factory=dict)
    cgroup_parent: str = ""
    security: SandboxSecurity = field(default_factory=SandboxSecurity)
    sysctls: Labels = field(default_factory=dict)
    overhead: Resources | None = None
    resources: Resources | None = None


@dataclass(frozen=True, slots=True)
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str = ""
    readonly: bool = False
    selinux_relabel: bool = False
    propagation: Propagation = Propagation.PRIVATE
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()
    recursive_read_only: bool = False
    image: ImageSpec | None = None
    image_sub_path: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Device:
    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    metadata: ContainerMetadata
    image: ImageSpec
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    labels: Labels = field(default_factory=dict)
    annotations: Labels = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources | None = None
    security: ContainerSecurity = field(default_factory=ContainerSecurity)
    stop_signal: str = ""  # signal name ("SIGTERM"); empty = image default, else SIGTERM


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    ip: str = ""
    additional_ips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Sandbox:
    id: str
    config: SandboxConfig
    runtime_handler: str
    created_at: int  # unix ns
    state: SandboxState = SandboxState.READY
    phase: Phase = Phase.LIVE
    network: NetworkStatus = field(default_factory=NetworkStatus)
    # Backend-owned facts (netns path, infra pid...), opaque to the core.
    backend_info: Labels = field(default_factory=dict)

    @property
    def metadata(self) -> PodMetadata:
        return self.config.metadata

    def evolve(self, **changes: object) -> Self:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ContainerUser:
    uid: int
    gid: int
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    sandbox_id: str
    config: ContainerConfig
    image_id: str  # the image's config digest
    image_ref: str  # the repo digest (or id) it was created from
    created_at: int
    state: ContainerState = ContainerState.CREATED
    phase: Phase = Phase.LIVE
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    log_path: str = ""  # absolute: sandbox log_directory joined with config.log_path
    resources: Resources | None = None  # current (after UpdateContainerResources)
    user: ContainerUser | None = None
    backend_info: Labels = field(default_factory=dict)

    @property
    def metadata(self) -> ContainerMetadata:
        return self.config.metadata

    @property
    def labels(self) -> Labels:
        return self.config.labels

    def evolve(self, **changes: object) -> Self:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Image:
    """An image as the image service reports it."""

    id: str  # config digest, "sha256:..."
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    size: int = 0
    uid: int | None = None
    username: str = ""
    annotations: Labels = field(default_factory=dict)
    pinned: bool = False
    # From the image config: what a container runs when its config does not say.
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    user: str = ""


@dataclass
class NodeNetwork:
    """What kubelet tells the runtime about the node's network (UpdateRuntimeConfig),
    recorded by the core and read by the pods' CNI setup: one shared, mutable value."""

    pod_cidr: str = ""
