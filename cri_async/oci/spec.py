"""Building a container's OCI runtime spec (config.json) from the CRI domain model.

Everything here is pure: facts about the host (capabilities we hold, our oom_score_adj, ...),
the pod's pinned namespaces and files, the resolved user and, for a Localhost seccomp
profile, the profile itself come in as arguments. The rules are those of containerd's CRI
plugin, which is what kubelet and its conformance tests expect; where this builder differs
the docstrings say so.

The output targets runtime-spec 1.1 (it uses ``defaultErrnoRet``, ``errnoRet``,
``linux.resources.unified`` and the ``rro`` mount option); runc >= 1.1 and crun accept it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri_async.core.model import (
    Container,
    ContainerConfig,
    Image,
    Mount,
    NamespaceMode,
    ProfileType,
    Resources,
    Sandbox,
    SecurityProfile,
    SELinuxOptions,
    UserNamespace,
)
from cri_async.oci.caps import resolve_capabilities
from cri_async.oci.defaults import (
    ALLOW_ALL_DEVICES,
    DEFAULT_DEVICE_RULES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_NOFILE,
    DEFAULT_PATH_ENV,
    DEFAULT_READONLY_PATHS,
)
from cri_async.oci.errors import SpecError
from cri_async.oci.mounts import build_mounts, id_mappings
from cri_async.oci.seccomp import localhost_profile, runtime_default_profile
from cri_async.oci.user import ResolvedUser

__all__ = [
    "ANNOTATION_CONTAINER_NAME",
    "ANNOTATION_CONTAINER_TYPE",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_SANDBOX_ID",
    "OCI_VERSION",
    "DeviceNode",
    "HostFacts",
    "PodPaths",
    "SpecError",
    "container_spec",
    "exec_process",
    "linux_resources",
    "merge_env",
    "process_args",
]

OCI_VERSION = "1.1.0"

ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"

_OOM_MIN, _OOM_MAX = -1000, 1000


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the host and this runtime's own process allow (gathered by the caller)."""

    # Our bounding set (CapBnd of /proc/self/status, see defaults.capabilities_from_mask):
    # requested capabilities are intersected with it.
    bounding_caps: frozenset[str]
    # Our own oom_score_adj: lowering below it needs CAP_SYS_RESOURCE, so values are clamped up.
    min_oom_score_adj: int = 0
    # The RLIMIT_NOFILE hard limit we hold and can pass on.
    nofile_hard: int = DEFAULT_NOFILE
    # Kernel LSM support; profiles and labels are left out when False.
    apparmor: bool = False
    selinux: bool = False
    cgroup_v2: bool = False
    # Architecture for the seccomp profile ("x86_64", "aarch64", ...).
    arch: str = "x86_64"
    # Swap accounting available (memory.memsw.* on v1, memory.swap.max on v2).
    swap: bool = True
    # hugetlb controller available; without it hugepage limits are left out (containerd
    # tolerates a missing controller by default, and kubelet sends limits regardless).
    hugetlb: bool = True
    # The runtime supports the "rro" mount option (runc >= 1.1 on Linux >= 5.12).
    recursive_read_only: bool = True
    # The AppArmor profile standing for RuntimeDefault, loaded by the caller (e.g.
    # "cri-async-default"); "" leaves RuntimeDefault containers without a profile.
    apparmor_default_profile: str = ""


@dataclass(frozen=True, slots=True)
class PodPaths:
    """Where the pod's shared namespaces and files are on the host."""

    netns: str | None  # pinned pod netns; None = host network
    ipcns: str | None  # None = host IPC
    utsns: str | None  # None = host UTS
    pidns: str | None = None  # PID mode POD: the pod's pinned pid ns (None: a new one each)
    hostname: str = ""
    resolv_conf: str | None = None
    hosts: str | None = None
    hostname_file: str | None = None
    shm: str | None = None  # the pod's /dev/shm directory to bind (None: a private tmpfs)
    userns: str | None = None  # pinned pod user namespace (None: created with the mappings)


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A device node on the host, as the caller found it by stat(2)."""

    path: str  # host path (symlinks resolved)
    type: str  # "c", "b", "u" or "p"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


# --- process --------------------------------------------------------------------------------


def process_args(config: ContainerConfig, image: Image) -> list[str]:
    """The command line: kubelet's command/args merged with the image's ENTRYPOINT/CMD.

    command replaces the entrypoint and drops the image's CMD; args replace CMD. An image
    ENTRYPOINT of exactly [""] means "no entrypoint". SpecError if nothing is left.
    """
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(image.cmd)
        if list(image.entrypoint) != [""]:
            command = list(image.entrypoint)
    argv = command + args
    if not argv:
        raise SpecError("no command specified")
    return argv


def _env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_env(*layers: Sequence[str]) -> list[str]:
    """Concatenate KEY=VALUE lists; a later value for a key replaces the earlier one in place.

    So keys stay unique, the first occurrence fixes a key's position and the last its value.
    """
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            merged[_env_key(entry)] = entry
    return list(merged.values())


def _env(config: ContainerConfig, image: Image, hostname: str, home: str) -> list[str]:
    # PATH and HOSTNAME first (the image may override them), then the image's environment,
    # then kubelet's; HOME last if nobody set it (runc would also fill it in).
    env = merge_env(
        [DEFAULT_PATH_ENV],
        [f"HOSTNAME={hostname}"] if hostname else [],
        image.env,
        [f"{k}={v}" for k, v in config.envs],
    )
    if not any(_env_key(e) == "HOME" for e in env):
        env.append(f"HOME={home}")
    return env


def _cwd(config: ContainerConfig, image: Image) -> str:
    cwd = config.working_dir or image.working_dir or "/"
    return posixpath.normpath(posixpath.join("/", cwd))


def _oom_score_adj(resources: Resources | None, host: HostFacts) -> int:
    wanted = resources.oom_score_adj if resources is not None else 0
    return min(_OOM_MAX, max(wanted, host.min_oom_score_adj, _OOM_MIN))


def _apparmor_profile(
    profile: SecurityProfile | None, *, privileged: bool, host: HostFacts
) -> str | None:
    """The AppArmor profile name, or None for none (unconfined / no AppArmor on the host).

    Unset means RuntimeDefault (as in containerd, following kubernetes#51746). Privileged
    containers get no default profile but keep an explicit Localhost one.
    """
    if not host.apparmor:
        return None
    kind = profile.type if profile is not None else ProfileType.RUNTIME_DEFAULT
    if profile is not None and kind is not ProfileType.LOCALHOST and profile.localhost_ref:
        raise SpecError("apparmor: localhost_ref is only valid with the Localhost profile type")
    if kind is ProfileType.UNCONFINED:
        return None
    if kind is ProfileType.RUNTIME_DEFAULT:
        if privileged or not host.apparmor_default_profile:
            return None
        return host.apparmor_default_profile
    assert profile is not None
    name = profile.localhost_ref.removeprefix("localhost/")
    if not name:
        raise SpecError("apparmor: Localhost profile without a profile name")
    return name


def _selinux_labels(
    options: SELinuxOptions | None, *, privileged: bool, host: HostFacts
) -> tuple[str | None, str | None]:
    """(process label, mount label) from explicit options; None where nothing is set.

    Missing parts take the usual container defaults (system_u, system_r, container_t, s0).
    Picking a unique MCS level per pod is the caller's job: pass it in ``level``.
    """
    if not host.selinux or options is None:
        return None, None
    if not (options.user or options.role or options.type or options.level):
        return None, None
    user = options.user or "system_u"
    level = options.level or "s0"
    process = f"{user}:{options.role or 'system_r'}:{options.type or 'container_t'}:{level}"
    mount = f"{user}:object_r:container_file_t:{level}"
    return (None if privileged else process), mount


def _rlimits(host: HostFacts) -> list[dict[str, Any]]:
    nofile = min(DEFAULT_NOFILE, host.nofile_hard)
    return [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]


def _base_process(
    container: Container,
    image: Image,
    args: list[str],
    *,
    tty: bool,
    user: ResolvedUser,
    host: HostFacts,
    hostname: str,
    sandbox_privileged: bool | None,
) -> dict[str, Any]:
    config = container.config
    sec = config.security
    if sec.privileged and sandbox_privileged is False:
        raise SpecError("privileged containers are not allowed in an unprivileged sandbox")
    process: dict[str, Any] = {
        "terminal": tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": args,
        "env": _env(config, image, hostname, user.home),
        "cwd": _cwd(config, image),
        "capabilities": resolve_capabilities(
            sec.capabilities, privileged=sec.privileged, bounding=host.bounding_caps
        ),
        "rlimits": _rlimits(host),
        "noNewPrivileges": sec.no_new_privs,
    }
    apparmor = _apparmor_profile(sec.apparmor, privileged=sec.privileged, host=host)
    if apparmor:
        process["apparmorProfile"] = apparmor
    label, _ = _selinux_labels(sec.selinux, privileged=sec.privileged, host=host)
    if label:
        process["selinuxLabel"] = label
    return process


def exec_process(
    container: Container,
    image: Image,
    cmd: Sequence[str],
    *,
    tty: bool,
    user: ResolvedUser,
    host: HostFacts,
    hostname: str = "",
) -> dict[str, Any]:
    """The ``process`` object for ``runc exec --process``: the container's identity, ``cmd``.

    User, environment (pass the pod's ``hostname`` for HOSTNAME), cwd, capabilities,
    noNewPrivileges, rlimits and LSM profile are the container's; seccomp and namespaces
    come from the container itself.
    """
    if not cmd:
        raise SpecError("no command specified")
    return _base_process(
        container,
        image,
        list(cmd),
        tty=tty,
        user=user,
        host=host,
        hostname=hostname,
        sandbox_privileged=None,
    )


# --- linux ----------------------------------------------------------------------------------


def _userns(sandbox: Sandbox, container: Container) -> UserNamespace | None:
    """The user namespace the container gets (mode POD), or None for the host's."""
    pod = sandbox.config.security.namespaces.userns
    own = container.config.security.namespaces.userns
    if pod is not None and own is not None and pod != own:
        raise SpecError("the container's user namespace options differ from the pod's")
    chosen = own if own is not None else pod
    if chosen is None or chosen.mode is NamespaceMode.NODE:
        return None
    if chosen.mode is not NamespaceMode.POD:
        raise SpecError(f"user namespace mode {chosen.mode.name} is not supported")
    if not chosen.uids or not chosen.gids:
        raise SpecError("a pod user namespace needs both uid and gid mappings")
    return chosen


def _namespaces(
    container: Container,
    pod: PodPaths,
    host: HostFacts,
    target_pidns: str | None,
    userns: UserNamespace | None,
) -> list[dict[str, str]]:
    opts = container.config.security.namespaces
    namespaces: list[dict[str, str]] = []

    def add(kind: str, path: str | None = None) -> None:
        namespaces.append({"type": kind, "path": path} if path else {"type": kind})

    if opts.pid is NamespaceMode.CONTAINER:
        add("pid")
    elif opts.pid is NamespaceMode.POD:
        add("pid", pod.pidns)
    elif opts.pid is NamespaceMode.TARGET:
        if not target_pidns:
            raise SpecError(f"PID namespace of target container {opts.target_id!r} is unknown")
        add("pid", target_pidns)
    # NODE: the host's pid namespace, i.e. no entry.
    if pod.netns:
        add("network", pod.netns)
    if opts.ipc is NamespaceMode.CONTAINER:
        add("ipc")
    elif pod.ipcns:
        add("ipc", pod.ipcns)
    if pod.utsns:
        add("uts", pod.utsns)
    add("mount")
    # A cgroup namespace hides the host's hierarchy; not for privileged containers (kubelet's
    # cgroup v2 KEP), and not on v1 where it would break tools expecting the full tree.
    if host.cgroup_v2 and not container.config.security.privileged:
        add("cgroup")
    if userns is not None:
        add("user", pod.userns)
    return namespaces


_IPC_SYSCTL_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_UTS_SYSCTLS = ("kernel.hostname", "kernel.domainname")


def normalize_sysctl(name: str) -> str:
    """``net/ipv4/ip_forward`` -> ``net.ipv4.ip_forward`` (dots and slashes swap roles)."""
    slash, dot = name.find("/"), name.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        return name.translate(str.maketrans("/.", "./"))
    return name


def _sysctls(
    sysctls: Mapping[str, str], *, net_private: bool, ipc_private: bool, uts_private: bool
) -> dict[str, str]:
    """The pod's sysctls, checked to be namespaced and to have a namespace of the pod's own."""
    out: dict[str, str] = {}
    for raw, value in sysctls.items():
        name = normalize_sysctl(raw)
        if name.startswith("net."):
            ok, why = net_private, "the pod uses the host network"
        elif name.startswith(_IPC_SYSCTL_PREFIXES) or name == "kernel.sem":
            ok, why = ipc_private, "the pod uses the host IPC namespace"
        elif name in _UTS_SYSCTLS:
            ok, why = uts_private, "the pod uses the host UTS namespace"
        else:
            raise SpecError(f"sysctl {raw!r} is not namespaced and cannot be set for a pod")
        if not ok:
            raise SpecError(f"sysctl {raw!r} cannot be set: {why}")
        out[name] = value
    return out


def _device_entries(
    config: ContainerConfig,
    nodes: Mapping[str, Sequence[DeviceNode]],
    host_devices: Sequence[DeviceNode],
    *,
    privileged: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(linux.devices, linux.resources.devices)."""
    devices: dict[str, dict[str, Any]] = {}
    rules = [dict(r) for r in DEFAULT_DEVICE_RULES]

    def node_entry(node: DeviceNode, path: str) -> dict[str, Any]:
        if node.type not in ("c", "b", "u", "p"):
            raise SpecError(f"device {node.path!r}: unknown type {node.type!r}")
        return {
            "path": path,
            "type": node.type,
            "major": node.major,
            "minor": node.minor,
            "fileMode": node.file_mode,
            "uid": node.uid,
            "gid": node.gid,
        }

    for dev in config.devices:
        access = dev.permissions or "rwm"
        if not set(access) <= set("rwm"):
            raise SpecError(f"device {dev.host_path!r}: bad permissions {dev.permissions!r}")
        if not dev.container_path.startswith("/"):
            raise SpecError(f"device path {dev.container_path!r} is not absolute")
        found = nodes.get(dev.host_path)
        if not found:
            raise SpecError(f"device {dev.host_path!r} was not found on the host")
        base = dev.host_path.rstrip("/")
        for node in found:
            if node.path.startswith(base + "/"):  # a node of a device directory (/dev/snd)
                path = posixpath.join(dev.container_path, node.path[len(base) + 1 :])
            else:
                path = dev.container_path
            devices[path] = node_entry(node, path)
            if node.type != "p":
                kind = "c" if node.type == "u" else node.type
                rules.append(
                    {
                        "allow": True,
                        "type": kind,
                        "major": node.major,
                        "minor": node.minor,
                        "access": access,
                    }
                )
    if privileged:
        for node in host_devices:
            devices.setdefault(node.path, node_entry(node, node.path))
        rules = [dict(ALLOW_ALL_DEVICES)]
    return list(devices.values()), rules


def _resources(
    resources: Resources | None, device_rules: list[dict[str, Any]], host: HostFacts
) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": device_rules}
    if resources is None:
        return out
    cpu: dict[str, Any] = {}
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if resources.memory_limit_in_bytes > 0:
        memory["limit"] = resources.memory_limit_in_bytes
        if host.swap and not resources.memory_swap_limit_in_bytes:
            # memory+swap equal to memory: no swapping unless asked for.
            memory["swap"] = resources.memory_limit_in_bytes
    if host.swap and resources.memory_swap_limit_in_bytes:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if resources.hugepage_limits and host.hugetlb:
        out["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in resources.hugepage_limits
        ]
    if resources.unified:
        if not host.cgroup_v2:
            raise SpecError("unified cgroup resources need cgroup v2")
        out["unified"] = dict(resources.unified)
    return out


def linux_resources(resources: Resources, host: HostFacts) -> dict[str, Any]:
    """``linux.resources`` without device rules: what ``runc update --resources -`` takes."""
    out = _resources(resources, [], host)
    del out["devices"]
    return out


def _seccomp(
    profile: SecurityProfile | None,
    *,
    privileged: bool,
    bounding: list[str],
    host: HostFacts,
    localhost: Mapping[str, Any] | None,
    default_when_unset: bool,
) -> dict[str, Any] | None:
    if privileged:
        return None
    if profile is None:
        if not default_when_unset:
            return None
        profile = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    if profile.type is not ProfileType.LOCALHOST and profile.localhost_ref:
        raise SpecError("seccomp: localhost_ref is only valid with the Localhost profile type")
    if profile.type is ProfileType.UNCONFINED:
        return None
    if profile.type is ProfileType.RUNTIME_DEFAULT:
        return runtime_default_profile(host.arch, caps=bounding)
    if localhost is None:
        raise SpecError(f"seccomp profile {profile.localhost_ref!r} was not loaded")
    try:
        return localhost_profile(localhost, host.arch, caps=bounding)
    except (ValueError, TypeError, AttributeError) as e:
        raise SpecError(f"seccomp profile {profile.localhost_ref!r}: {e}") from e


def _pod_mounts(pod: PodPaths, *, readonly_rootfs: bool) -> list[Mount]:
    """The pod-wide files every container sees; read-only when the rootfs is."""
    mounts = [
        Mount(container_path=dst, host_path=src, readonly=readonly_rootfs)
        for dst, src in (
            ("/etc/hostname", pod.hostname_file),
            ("/etc/hosts", pod.hosts),
            ("/etc/resolv.conf", pod.resolv_conf),
        )
        if src
    ]
    if pod.shm:
        mounts.append(Mount(container_path="/dev/shm", host_path=pod.shm))
    return mounts


def _annotations(sandbox: Sandbox, container: Container) -> dict[str, str]:
    config = container.config
    image_name = config.image.user_specified_image or config.image.image or container.image_ref
    out = dict(config.annotations)
    out.update(
        {
            ANNOTATION_CONTAINER_TYPE: "container",
            ANNOTATION_SANDBOX_ID: sandbox.id,
            ANNOTATION_SANDBOX_NAMESPACE: sandbox.metadata.namespace,
            ANNOTATION_SANDBOX_UID: sandbox.metadata.uid,
            ANNOTATION_SANDBOX_NAME: sandbox.metadata.name,
            ANNOTATION_CONTAINER_NAME: config.metadata.name,
            ANNOTATION_IMAGE_NAME: image_name,
        }
    )
    return out


def container_spec(
    sandbox: Sandbox,
    container: Container,
    image: Image,
    *,
    rootfs: str,
    pod: PodPaths,
    host: HostFacts,
    cgroups_path: str,
    user: ResolvedUser,
    seccomp_localhost: Mapping[str, Any] | None = None,
    target_pidns: str | None = None,
    devices: Mapping[str, Sequence[DeviceNode]] | None = None,
    host_devices: Sequence[DeviceNode] = (),
    seccomp_default: bool = False,
) -> dict[str, Any]:
    """The container's config.json as a JSON-serialisable dict.

    ``seccomp_localhost``: the Localhost seccomp profile's JSON, read by the caller.
    ``target_pidns``: the target container's pid ns path for PID mode TARGET.
    ``devices``: for each configured device host path, the node(s) found there (several for
    a directory). ``host_devices``: every device of the host, given to privileged containers.
    ``seccomp_default``: apply RuntimeDefault when the config leaves seccomp unset (kubelet
    always sends a profile; unset means Unconfined as in containerd's default configuration).

    Raises SpecError for configurations that cannot be honoured.
    """
    config = container.config
    sec = config.security
    privileged = sec.privileged
    hostname = pod.hostname or sandbox.config.hostname

    process = _base_process(
        container,
        image,
        process_args(config, image),
        tty=config.tty,
        user=user,
        host=host,
        hostname=hostname,
        sandbox_privileged=sandbox.config.security.privileged,
    )
    resources = container.resources if container.resources is not None else config.resources
    process["oomScoreAdj"] = _oom_score_adj(resources, host)

    userns = _userns(sandbox, container)
    namespaces = _namespaces(container, pod, host, target_pidns, userns)
    kinds = {ns["type"] for ns in namespaces}

    mounts, rootfs_propagation = build_mounts(
        config.mounts,
        _pod_mounts(pod, readonly_rootfs=sec.readonly_rootfs),
        privileged=privileged,
        bind_host_sys=userns is not None and pod.netns is None,
        rro_supported=host.recursive_read_only,
    )

    linux_devices, device_rules = _device_entries(
        config, devices or {}, host_devices, privileged=privileged
    )
    if privileged:
        masked: list[str] = []
        readonly: list[str] = []
    else:
        masked = list(sec.masked_paths or DEFAULT_MASKED_PATHS)
        readonly = list(sec.readonly_paths or DEFAULT_READONLY_PATHS)

    linux: dict[str, Any] = {
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
        "resources": _resources(resources, device_rules, host),
        "devices": linux_devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    }
    if userns is not None:
        linux["uidMappings"] = id_mappings(userns.uids)
        linux["gidMappings"] = id_mappings(userns.gids)
    sysctls = _sysctls(
        sandbox.config.sysctls,
        net_private="network" in kinds,
        ipc_private="ipc" in kinds,
        uts_private="uts" in kinds,
    )
    if sysctls:
        linux["sysctl"] = sysctls
    seccomp = _seccomp(
        sec.seccomp,
        privileged=privileged,
        bounding=process["capabilities"]["bounding"],
        host=host,
        localhost=seccomp_localhost,
        default_when_unset=seccomp_default,
    )
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation
    _, mount_label = _selinux_labels(sec.selinux, privileged=privileged, host=host)
    if mount_label:
        linux["mountLabel"] = mount_label

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": sec.readonly_rootfs},
        "mounts": mounts,
        "annotations": _annotations(sandbox, container),
        "linux": linux,
    }
    if "uts" in kinds and hostname:
        spec["hostname"] = hostname
    return spec
