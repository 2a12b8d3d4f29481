"""The container's namespaces in the spec (``linux.namespaces``, the user namespace it
shares with its pod) and the pod's sysctls, which need a namespace of the pod's own (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from cri_async.core.model import Container, NamespaceMode, Sandbox, UserNamespace
from cri_async.oci.errors import SpecError
from cri_async.oci.inputs import HostFacts, PodPaths


def pod_user_namespace(sandbox: Sandbox, container: Container) -> UserNamespace | None:
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


def namespace_entries(
    container: Container,
    pod: PodPaths,
    host: HostFacts,
    target_pidns: str | None,
    userns: UserNamespace | None,
) -> list[dict[str, str]]:
    """``linux.namespaces``: a path joins the pod's (or target's) namespace, none makes one."""
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


def pod_sysctls(
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
