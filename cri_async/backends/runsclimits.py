"""What a pod or container asks that gVisor (runsc) cannot give, refused before anything is
made (pure). Each refusal is FAILED_PRECONDITION naming the field and why: running
something other than what was asked is never an option. docs/runtimes.md lists them.

Tested against runsc 0.0~20221219 on the host network passthrough (``--network=host``, the
handler's default): the sandbox is a kernel of its own, so it cannot share the host's PID
or IPC namespace, its /proc and /sys are its own (sysctls in the spec are not applied, the
host's sockets are not listed), it has no host devices, bridges or iptables, its mounts
never propagate to or from the host, and this runsc neither honours setuid bits nor applies
a container's seccomp profile to processes started by ``exec`` (gVisor added both later).
"""

from __future__ import annotations

from collections.abc import Iterable

from cri_async.core.errors import FailedPrecondition
from cri_async.core.model import (
    ContainerConfig,
    NamespaceMode,
    NamespaceOptions,
    Propagation,
    SandboxConfig,
)
from cri_async.oci.caps import normalize_capability
from cri_async.oci.errors import SpecError

UNKNOWN_CAPS = frozenset({"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})
"""Capabilities newer than this runsc: a spec naming one fails at start."""

_WHY_HOST_NS = "the pod runs in gVisor's own kernel, which cannot share the host's"


def _host_namespaces(ns: NamespaceOptions, where: str) -> None:
    if ns.network is NamespaceMode.NODE:
        raise FailedPrecondition(
            f"{where}.network NODE (host network) is not supported by gVisor: its network "
            "passthrough uses the host's stack, but /proc/net in the sandbox lists only the "
            "sandbox's own sockets, so the pod would not share the node's network namespace "
            "as asked"
        )
    for kind, mode in (("pid", ns.pid), ("ipc", ns.ipc)):
        if mode is NamespaceMode.NODE:
            raise FailedPrecondition(
                f"{where}.{kind} NODE (host {kind.upper()} namespace) is not supported by "
                f"gVisor: {_WHY_HOST_NS}"
            )


def check_sandbox(config: SandboxConfig) -> None:
    """Refuse a pod gVisor cannot run as asked."""
    # A privileged pod only permits privileged containers; those are refused one by one.
    _host_namespaces(
        config.security.namespaces, "pod sandbox linux.security_context.namespace_options"
    )
    if config.sysctls:
        names = ", ".join(sorted(config.sysctls))
        raise FailedPrecondition(
            f"pod sandbox linux.sysctls ({names}) are not supported by gVisor: runsc does "
            "not apply sysctls from the OCI spec and its /proc/sys is its own"
        )


def check_container(
    config: ContainerConfig, *, host_network_stack: bool, host_mounts: Iterable[str] = ()
) -> None:
    """Refuse a container gVisor cannot run as asked. ``host_network_stack``: the pod uses
    gVisor's network passthrough (the host kernel's stack in the pod's netns);
    ``host_mounts``: the host's mount points."""
    sec = config.security
    where = "container linux.security_context"
    _host_namespaces(sec.namespaces, f"{where}.namespace_options")
    if sec.privileged:
        raise FailedPrecondition(
            f"{where}.privileged is not supported by gVisor: the container cannot get the "
            "host's devices or kernel interfaces"
        )
    for name in sec.capabilities.add if sec.capabilities is not None else ():
        if name.strip().upper() == "ALL":
            continue  # everything gVisor has
        try:
            cap = normalize_capability(name)
        except SpecError:
            continue  # the spec builder names it
        if cap in UNKNOWN_CAPS:
            raise FailedPrecondition(
                f"{where}.capabilities.add_capabilities {name}: this runsc does not know "
                "the capability"
            )
        if cap == "CAP_NET_ADMIN" and host_network_stack:
            raise FailedPrecondition(
                f"{where}.capabilities.add_capabilities {name}: with gVisor's host network "
                "passthrough the container cannot administer interfaces, routes, bridges or "
                "firewall rules (gVisor does not pass them to the host)"
            )
    points = list(host_mounts)
    for m in config.mounts:
        below = [p for p in points if m.host_path and p.startswith(m.host_path.rstrip("/") + "/")]
        if m.readonly and not m.recursive_read_only and below:
            raise FailedPrecondition(
                f"mount at {m.container_path!r}: a read-only mount that leaves the mounts "
                f"below its host path ({below[0]}) writable is not supported by gVisor, "
                "whose read-only binds cover everything below them (ask for "
                "recursive_read_only)"
            )
        if m.propagation is Propagation.BIDIRECTIONAL:
            raise FailedPrecondition(
                f"mount at {m.container_path!r}: propagation BIDIRECTIONAL is not supported "
                "by gVisor: mounts made in the sandbox never reach the host"
            )


def exec_applies_seccomp(version: str) -> bool:
    """Whether this runsc gives processes started by ``exec`` the container's seccomp
    filter (gVisor release-20260308 and later; ``0.0~20221219`` does not)."""
    digits = "".join(c for c in version.split("~")[-1].split("-")[-1] if c.isdigit())
    return len(digits) >= 8 and int(digits[:8]) >= 20260308
