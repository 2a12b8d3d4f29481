"""Protobuf <-> domain conversion. The only module that knows both shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.core import model as m
from cri_async.core.errors import InvalidArgument
from cri_async.core.events import ContainerEvent, EventType
from cri_async.core.filters import Filter
from cri_async.core.images import AuthConfig, FilesystemUsage
from cri_async.services import legacyprofiles

# -- enums ----------------------------------------------------------------------------

_NS = {
    pb.POD: m.NamespaceMode.POD,
    pb.CONTAINER: m.NamespaceMode.CONTAINER,
    pb.NODE: m.NamespaceMode.NODE,
    pb.TARGET: m.NamespaceMode.TARGET,
}
_NS_PB = {v: k for k, v in _NS.items()}
_PROP = {
    pb.PROPAGATION_PRIVATE: m.Propagation.PRIVATE,
    pb.PROPAGATION_HOST_TO_CONTAINER: m.Propagation.HOST_TO_CONTAINER,
    pb.PROPAGATION_BIDIRECTIONAL: m.Propagation.BIDIRECTIONAL,
}
_PROP_PB = {v: k for k, v in _PROP.items()}
_PROFILE = {
    pb.SecurityProfile.RuntimeDefault: m.ProfileType.RUNTIME_DEFAULT,
    pb.SecurityProfile.Unconfined: m.ProfileType.UNCONFINED,
    pb.SecurityProfile.Localhost: m.ProfileType.LOCALHOST,
}
_PROTO = {pb.TCP: m.Protocol.TCP, pb.UDP: m.Protocol.UDP, pb.SCTP: m.Protocol.SCTP}
_SGP = {pb.Merge: m.SupplementalGroupsPolicy.MERGE, pb.Strict: m.SupplementalGroupsPolicy.STRICT}
SANDBOX_STATE = {
    m.SandboxState.READY: pb.SANDBOX_READY,
    m.SandboxState.NOTREADY: pb.SANDBOX_NOTREADY,
}
SANDBOX_STATE_IN = {v: k for k, v in SANDBOX_STATE.items()}
CONTAINER_STATE = {
    m.ContainerState.CREATED: pb.CONTAINER_CREATED,
    m.ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    m.ContainerState.EXITED: pb.CONTAINER_EXITED,
    m.ContainerState.UNKNOWN: pb.CONTAINER_UNKNOWN,
}
CONTAINER_STATE_IN = {v: k for k, v in CONTAINER_STATE.items()}
EVENT_TYPE = {
    EventType.CREATED: pb.CONTAINER_CREATED_EVENT,
    EventType.STARTED: pb.CONTAINER_STARTED_EVENT,
    EventType.STOPPED: pb.CONTAINER_STOPPED_EVENT,
    EventType.DELETED: pb.CONTAINER_DELETED_EVENT,
}


def _enum(table: Mapping[Any, Any], value: int, what: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"{what}: unknown enum value {value}") from None


def signal_name(value: int) -> str:
    """``SIGNAL_SIGRTMINPLUS3`` -> ``SIGRTMIN+3``; runtime default -> ``""``."""
    if value == pb.SIGNAL_RUNTIME_DEFAULT:
        return ""
    if value not in pb.Signal.values():
        raise InvalidArgument(f"stop_signal: unknown enum value {value}")
    name = pb.Signal.Name(value).removeprefix("SIGNAL_")  # type: ignore[arg-type]
    return name.replace("PLUS", "+").replace("MINUS", "-")


def signal_value(name: str) -> int:
    if not name:
        return pb.SIGNAL_RUNTIME_DEFAULT
    wire = "SIGNAL_" + name.replace("+", "PLUS").replace("-", "MINUS")
    return int(pb.Signal.Value(wire)) if wire in pb.Signal.keys() else pb.SIGNAL_RUNTIME_DEFAULT  # noqa: SIM118


# -- requests -> domain ---------------------------------------------------------------


def _idmaps(items: Iterable[pb.IDMapping]) -> tuple[m.IDMapping, ...]:
    return tuple(m.IDMapping(i.host_id, i.container_id, i.length) for i in items)


def namespaces(ns: pb.NamespaceOption) -> m.NamespaceOptions:
    userns = None
    if ns.HasField("userns_options"):
        u = ns.userns_options
        userns = m.UserNamespace(
            _enum(_NS, u.mode, "userns_options.mode"), _idmaps(u.uids), _idmaps(u.gids)
        )
    return m.NamespaceOptions(
        network=_enum(_NS, ns.network, "namespace_options.network"),
        pid=_enum(_NS, ns.pid, "namespace_options.pid"),
        ipc=_enum(_NS, ns.ipc, "namespace_options.ipc"),
        target_id=ns.target_id,
        userns=userns,
    )


def _profile(has: bool, p: pb.SecurityProfile) -> m.SecurityProfile | None:
    if not has:
        return None
    return m.SecurityProfile(_enum(_PROFILE, p.profile_type, "profile_type"), p.localhost_ref)


_CSC = "container linux.security_context"


def _seccomp(
    sc: pb.LinuxSandboxSecurityContext | pb.LinuxContainerSecurityContext, what: str
) -> m.SecurityProfile | None:
    """The ``seccomp`` field, else the deprecated ``seccomp_profile_path`` it supersedes."""
    if sc.HasField("seccomp"):
        return _profile(True, sc.seccomp)
    return legacyprofiles.legacy_profile(sc.seccomp_profile_path, f"{what}.seccomp_profile_path")


def _selinux(has: bool, s: pb.SELinuxOption) -> m.SELinuxOptions | None:
    return m.SELinuxOptions(s.user, s.role, s.type, s.level) if has else None


def resources(r: pb.LinuxContainerResources) -> m.Resources:
    return m.Resources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=tuple(m.HugepageLimit(h.page_size, h.limit) for h in r.hugepage_limits),
        unified=dict(r.unified),
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def _int64(has: bool, v: pb.Int64Value) -> int | None:
    return v.value if has else None


def image_spec(s: pb.ImageSpec) -> m.ImageSpec:
    return m.ImageSpec(
        image=s.image,
        annotations=dict(s.annotations),
        user_specified_image=s.user_specified_image,
        runtime_handler=s.runtime_handler,
        image_ref=s.image_ref,
    )


def sandbox_config(c: pb.PodSandboxConfig) -> m.SandboxConfig:
    if not c.HasField("metadata"):
        raise InvalidArgument("pod sandbox config.metadata is required")
    md = c.metadata
    lx = c.linux
    sc = lx.security_context
    dns = None
    if c.HasField("dns_config"):
        d = c.dns_config
        dns = m.DNSConfig(tuple(d.servers), tuple(d.searches), tuple(d.options))
    return m.SandboxConfig(
        metadata=m.PodMetadata(md.name, md.uid, md.namespace, md.attempt),
        hostname=c.hostname,
        log_directory=c.log_directory,
        dns=dns,
        port_mappings=tuple(
            m.PortMapping(
                _enum(_PROTO, p.protocol, "port_mappings.protocol"),
                p.container_port,
                p.host_port,
                p.host_ip,
            )
            for p in c.port_mappings
        ),
        labels=dict(c.labels),
        annotations=dict(c.annotations),
        cgroup_parent=lx.cgroup_parent,
        security=m.SandboxSecurity(
            namespaces=namespaces(sc.namespace_options),
            selinux=_selinux(sc.HasField("selinux_options"), sc.selinux_options),
            run_as_user=_int64(sc.HasField("run_as_user"), sc.run_as_user),
            run_as_group=_int64(sc.HasField("run_as_group"), sc.run_as_group),
            readonly_rootfs=sc.readonly_rootfs,
            supplemental_groups=tuple(sc.supplemental_groups),
            supplemental_groups_policy=_enum(_SGP, sc.supplemental_groups_policy, "policy"),
            privileged=sc.privileged,
            seccomp=_seccomp(sc, "pod sandbox linux.security_context"),
            apparmor=_profile(sc.HasField("apparmor"), sc.apparmor),
        ),
        sysctls=dict(lx.sysctls),
        overhead=resources(lx.overhead) if lx.HasField("overhead") else None,
        resources=resources(lx.resources) if lx.HasField("resources") else None,
    )


def _mount(x: pb.Mount) -> m.Mount:
    return m.Mount(
        container_path=x.container_path,
        host_path=x.host_path,
        readonly=x.readonly,
        selinux_relabel=x.selinux_relabel,
        propagation=_enum(_PROP, x.propagation, "mount.propagation"),
        uid_mappings=_idmaps(x.uidMappings),
        gid_mappings=_idmaps(x.gidMappings),
        recursive_read_only=x.recursive_read_only,
        image=image_spec(x.image) if x.HasField("image") else None,
        image_sub_path=x.image_sub_path,
        options=tuple(x.mount_options),
    )


def container_config(c: pb.ContainerConfig) -> m.ContainerConfig:
    if not c.HasField("metadata"):
        raise InvalidArgument("container config.metadata is required")
    lx = c.linux
    sc = lx.security_context
    caps = None
    if sc.HasField("capabilities"):
        k = sc.capabilities
        caps = m.Capabilities(
            tuple(k.add_capabilities),
            tuple(k.drop_capabilities),
            tuple(k.add_ambient_capabilities),
        )
    return m.ContainerConfig(
        metadata=m.ContainerMetadata(c.metadata.name, c.metadata.attempt),
        image=image_spec(c.image),
        command=tuple(c.command),
        args=tuple(c.args),
        working_dir=c.working_dir,
        # Env values are bytes on the wire; keep undecodable bytes via surrogateescape.
        envs=tuple((kv.key, kv.value.decode("utf-8", "surrogateescape")) for kv in c.envs),
        mounts=tuple(_mount(x) for x in c.mounts),
        devices=tuple(m.Device(d.container_path, d.host_path, d.permissions) for d in c.devices),
        cdi_devices=tuple(d.name for d in c.CDI_devices),
        labels=dict(c.labels),
        annotations=dict(c.annotations),
        log_path=c.log_path,
        stdin=c.stdin,
        stdin_once=c.stdin_once,
        tty=c.tty,
        resources=resources(lx.resources) if lx.HasField("resources") else None,
        security=m.ContainerSecurity(
            capabilities=caps,
            privileged=sc.privileged,
            namespaces=namespaces(sc.namespace_options),
            selinux=_selinux(sc.HasField("selinux_options"), sc.selinux_options),
            run_as_user=_int64(sc.HasField("run_as_user"), sc.run_as_user),
            run_as_group=_int64(sc.HasField("run_as_group"), sc.run_as_group),
            run_as_username=sc.run_as_username,
            readonly_rootfs=sc.readonly_rootfs,
            supplemental_groups=tuple(sc.supplemental_groups),
            supplemental_groups_policy=_enum(_SGP, sc.supplemental_groups_policy, "policy"),
            no_new_privs=sc.no_new_privs,
            masked_paths=tuple(sc.masked_paths),
            readonly_paths=tuple(sc.readonly_paths),
            seccomp=_seccomp(sc, _CSC),
            apparmor=_profile(True, sc.apparmor)
            if sc.HasField("apparmor")
            else legacyprofiles.legacy_profile(sc.apparmor_profile, f"{_CSC}.apparmor_profile"),
        ),
        stop_signal=signal_name(c.stop_signal),
    )


def sandbox_filter(f: pb.PodSandboxFilter) -> Filter[m.SandboxState]:
    state = _enum(SANDBOX_STATE_IN, f.state.state, "filter.state") if f.HasField("state") else None
    return Filter(id=f.id, state=state, labels=dict(f.label_selector))


def container_filter(f: pb.ContainerFilter) -> Filter[m.ContainerState]:
    state = (
        _enum(CONTAINER_STATE_IN, f.state.state, "filter.state") if f.HasField("state") else None
    )
    return Filter(id=f.id, state=state, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector))


def auth(a: pb.AuthConfig) -> AuthConfig:
    return AuthConfig(
        a.username, a.password, a.auth, a.server_address, a.identity_token, a.registry_token
    )


# -- domain -> responses --------------------------------------------------------------


def _pb_image_spec(s: m.ImageSpec) -> pb.ImageSpec:
    return pb.ImageSpec(
        image=s.image,
        annotations=s.annotations,
        user_specified_image=s.user_specified_image,
        runtime_handler=s.runtime_handler,
        image_ref=s.image_ref,
    )


def pb_pod_metadata(md: m.PodMetadata) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(
        name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt
    )


def pod_sandbox(s: m.Sandbox) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=s.id,
        metadata=pb_pod_metadata(s.metadata),
        state=SANDBOX_STATE[s.state],
        created_at=s.created_at,
        labels=s.config.labels,
        annotations=s.config.annotations,
        runtime_handler=s.runtime_handler,
    )


def _pb_idmaps(items: Iterable[m.IDMapping]) -> list[pb.IDMapping]:
    return [
        pb.IDMapping(host_id=i.host_id, container_id=i.container_id, length=i.length) for i in items
    ]


def _pb_namespaces(ns: m.NamespaceOptions) -> pb.NamespaceOption:
    out = pb.NamespaceOption(
        network=_NS_PB[ns.network], pid=_NS_PB[ns.pid], ipc=_NS_PB[ns.ipc], target_id=ns.target_id
    )
    if ns.userns is not None:
        out.userns_options.CopyFrom(
            pb.UserNamespace(
                mode=_NS_PB[ns.userns.mode],
                uids=_pb_idmaps(ns.userns.uids),
                gids=_pb_idmaps(ns.userns.gids),
            )
        )
    return out


def pod_sandbox_status(s: m.Sandbox) -> pb.PodSandboxStatus:
    return pb.PodSandboxStatus(
        id=s.id,
        metadata=pb_pod_metadata(s.metadata),
        state=SANDBOX_STATE[s.state],
        created_at=s.created_at,
        network=pb.PodSandboxNetworkStatus(
            ip=s.network.ip, additional_ips=[pb.PodIP(ip=i) for i in s.network.additional_ips]
        ),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(options=_pb_namespaces(s.config.security.namespaces))
        ),
        labels=s.config.labels,
        annotations=s.config.annotations,
        runtime_handler=s.runtime_handler,
    )


def pb_container_metadata(md: m.ContainerMetadata) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=md.name, attempt=md.attempt)


def _image_with_ref(c: m.Container) -> pb.ImageSpec:
    spec = _pb_image_spec(c.config.image)
    spec.image_ref = spec.image_ref or c.image_id
    return spec


def container(c: m.Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        metadata=pb_container_metadata(c.metadata),
        image=_image_with_ref(c),
        image_ref=c.image_ref,
        image_id=c.image_id,
        state=CONTAINER_STATE[c.state],
        created_at=c.created_at,
        labels=c.config.labels,
        annotations=c.config.annotations,
    )


def pb_resources(r: m.Resources) -> pb.LinuxContainerResources:
    return pb.LinuxContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=[
            pb.HugepageLimit(page_size=h.page_size, limit=h.limit) for h in r.hugepage_limits
        ],
        unified=r.unified,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def _pb_mount(x: m.Mount) -> pb.Mount:
    out = pb.Mount(
        container_path=x.container_path,
        host_path=x.host_path,
        readonly=x.readonly,
        selinux_relabel=x.selinux_relabel,
        propagation=_PROP_PB[x.propagation],
        uidMappings=_pb_idmaps(x.uid_mappings),
        gidMappings=_pb_idmaps(x.gid_mappings),
        recursive_read_only=x.recursive_read_only,
        image_sub_path=x.image_sub_path,
        mount_options=list(x.options),
    )
    if x.image is not None:
        out.image.CopyFrom(_pb_image_spec(x.image))
    return out


def container_status(c: m.Container) -> pb.ContainerStatus:
    out = pb.ContainerStatus(
        id=c.id,
        metadata=pb_container_metadata(c.metadata),
        state=CONTAINER_STATE[c.state],
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        exit_code=c.exit_code,
        image=_image_with_ref(c),
        image_ref=c.image_ref,
        image_id=c.image_id,
        reason=c.reason,
        message=c.message,
        labels=c.config.labels,
        annotations=c.config.annotations,
        mounts=[_pb_mount(x) for x in c.config.mounts],
        log_path=c.log_path,
        stop_signal=signal_value(c.config.stop_signal),  # type: ignore[arg-type]
    )
    if c.resources is not None:
        out.resources.linux.CopyFrom(pb_resources(c.resources))
    if c.user is not None:
        out.user.linux.CopyFrom(
            pb.LinuxContainerUser(
                uid=c.user.uid, gid=c.user.gid, supplemental_groups=c.user.supplemental_groups
            )
        )
    return out


def image(i: m.Image) -> pb.Image:
    out = pb.Image(
        id=i.id,
        repo_tags=i.repo_tags,
        repo_digests=i.repo_digests,
        size=i.size,
        username=i.username,
        spec=pb.ImageSpec(image=i.id, annotations=i.annotations),
        pinned=i.pinned,
    )
    if i.uid is not None:
        out.uid.value = i.uid
    return out


def fs_usage(u: FilesystemUsage) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=u.timestamp,
        fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint),
        used_bytes=pb.UInt64Value(value=u.used_bytes),
        inodes_used=pb.UInt64Value(value=u.inodes_used),
    )


def event(e: ContainerEvent) -> pb.ContainerEventResponse:
    out = pb.ContainerEventResponse(
        container_id=e.container_id,
        container_event_type=EVENT_TYPE[e.type],
        created_at=e.created_at,
        containers_statuses=[container_status(c) for c in e.containers],
    )
    if e.sandbox is not None:
        out.pod_sandbox_status.CopyFrom(pod_sandbox_status(e.sandbox))
    return out


# -- cache of per-object messages for big lists ----------------------------------------

Rec = TypeVar("Rec")
Msg = TypeVar("Msg")


class MessageCache(Generic[Rec, Msg]):
    """Records are immutable, so a record's message is built once and reused until the
    table holds a new record object for that id."""

    def __init__(self, build: Callable[[Rec], Msg]) -> None:
        self._build = build
        self._cache: dict[str, tuple[Rec, Msg]] = {}

    def get(self, key: str, rec: Rec) -> Msg:
        hit = self._cache.get(key)
        if hit is not None and hit[0] is rec:
            return hit[1]
        msg = self._build(rec)
        self._cache[key] = (rec, msg)
        return msg

    def prune(self, live: set[str]) -> None:
        for key in [k for k in self._cache if k not in live]:
            del self._cache[key]
