"""Request validation shared by pod and container creates. Pure.

What comes from a client is checked here before anything is made from it. Names and ids
never become paths (objects are stored by server-made ids). The fields CRI defines as host
paths (a pod's log directory, mount and device sources) are the client's choice by design
(kubelet is root-equivalent), but must be absolute: a relative one would be resolved
against the server's working directory. A container's log path may not climb out of its
pod's log directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from cri_async.core.errors import InvalidArgument
from cri_async.core.model import (
    ContainerConfig,
    IDMapping,
    NamespaceMode,
    SandboxConfig,
    UserNamespace,
)

MAX_NAME = 253  # a DNS subdomain, the longest name Kubernetes gives anything
MAX_METADATA_BYTES = 256 * 1024  # the API server's cap on a pod's annotations


def require(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    return value


def name_field(value: str, what: str) -> str:
    require(value, what)
    if len(value.encode()) > MAX_NAME:
        raise InvalidArgument(f"{what} is {len(value.encode())} bytes; at most {MAX_NAME} allowed")
    if any(c in value for c in "\x00/\n"):
        raise InvalidArgument(f"{what} {value!r} must not contain '/', NUL or newlines")
    return value


def shown(value: str, limit: int = 80) -> str:
    """A client's value as a message quotes it: repr'd, cut if long."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def pod_name_field(value: str, what: str) -> str:
    """A pod metadata field: a name, which also travels in CNI_ARGS (``K=V;K=V``)."""
    name_field(value, what)
    if ";" in value or "=" in value:
        raise InvalidArgument(f"{what} {shown(value)} must not contain ';' or '='")
    return value


def _no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise InvalidArgument(f"{what} {shown(value)} must not contain NUL")


def _no_dotdot(value: str, what: str) -> None:
    if ".." in PurePosixPath(value).parts:
        raise InvalidArgument(f"{what} {shown(value)} must not contain '..'")


def absolute_path(value: str, what: str) -> str:
    """A path the client chose, on the host or in the container: absolute, no NUL."""
    _no_nul(value, what)
    if not value.startswith("/"):
        raise InvalidArgument(f"{what} {shown(value)} must be an absolute path")
    return value


def sandbox_paths(config: SandboxConfig) -> None:
    """The pod's log directory (a host path) and cgroup parent (a path in each cgroup
    hierarchy: never out of it)."""
    if config.log_directory:
        absolute_path(config.log_directory, "pod sandbox log_directory")
    if config.cgroup_parent:
        _no_nul(config.cgroup_parent, "pod sandbox cgroup_parent")
        _no_dotdot(config.cgroup_parent, "pod sandbox cgroup_parent")
    if config.dns is not None:
        for entry in (*config.dns.servers, *config.dns.searches, *config.dns.options):
            if any(c in entry for c in "\x00\n\r"):
                raise InvalidArgument(f"dns_config entry {shown(entry)} must be one line")
    for p in config.port_mappings:
        for port, which in ((p.container_port, "container_port"), (p.host_port, "host_port")):
            if not 0 <= port <= 65535:
                raise InvalidArgument(f"port_mappings {which} {port} is not 0-65535")


def command(argv: Sequence[str], what: str) -> None:
    """A command to exec: at least the program; no NUL (execve cannot pass one)."""
    if not argv:
        raise InvalidArgument(f"{what} must not be empty")
    for arg in argv:
        _no_nul(arg, f"{what} argument")


def container_config(config: ContainerConfig, log_directory: str) -> None:
    """What a container's config makes on the host or passes to exec: log path (relative
    to the pod's log directory, or absolute; never climbing out), mount and device
    sources (host paths) and targets (container paths), command, environment, working
    directory."""
    for arg in (*config.command, *config.args):
        _no_nul(arg, "container command argument")
    for key, value in config.envs:
        _no_nul(key, "container env key")
        _no_nul(value, "container env value")
        if not key or "=" in key:
            raise InvalidArgument(f"container env key {shown(key)} must be a name without '='")
    if config.working_dir:
        absolute_path(config.working_dir, "container working_dir")
    if config.log_path:
        _no_nul(config.log_path, "container log_path")
        _no_dotdot(config.log_path, "container log_path")
        if config.log_path.endswith(("/", "/.")) or config.log_path == ".":
            raise InvalidArgument(
                f"container log_path {shown(config.log_path)} names a directory, not a file"
            )
        if not config.log_path.startswith("/") and not log_directory:
            raise InvalidArgument(
                f"container log_path {shown(config.log_path)} is relative, and the pod has "
                "no log_directory"
            )
    for m in config.mounts:
        absolute_path(m.container_path, "mount container_path")
        if m.image is None:
            absolute_path(m.host_path, "mount host_path")
    for d in config.devices:
        absolute_path(d.container_path, "device container_path")
        absolute_path(d.host_path, "device host_path")


def key_values(labels: Mapping[str, str], annotations: Mapping[str, str], what: str) -> None:
    size = 0
    for kind, items in (("label", labels), ("annotation", annotations)):
        for k, v in items.items():
            if not k:
                raise InvalidArgument(f"{what} has a {kind} with an empty key")
            size += len(k.encode()) + len(v.encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{what} labels and annotations total {size} bytes; at most {MAX_METADATA_BYTES}"
        )


HOST_NAME_MAX = 64  # sethostname(2) refuses longer names


def hostname(value: str, what: str) -> str:
    """An RFC 1123 host name (labels of letters, digits and inner hyphens, dot-separated)
    that the kernel accepts: at most 64 bytes, each label at most 63."""
    size = len(value.encode())
    if size > HOST_NAME_MAX:
        raise InvalidArgument(
            f"{what} {value[:80]!r} is {size} bytes; a host name has at most {HOST_NAME_MAX}"
        )
    for label in value.split("."):
        ok = (
            0 < len(label) <= 63
            and label.isascii()
            and label.replace("-", "").isalnum()
            and not label.startswith("-")
            and not label.endswith("-")
        )
        if not ok:
            raise InvalidArgument(
                f"{what} {value!r} is not a valid host name: dot-separated labels of "
                "letters, digits and inner hyphens, each 1-63 characters"
            )
    return value


def group_has_user(group: int | None, user: int | None, username: str, what: str) -> None:
    """A primary group alone names no user to give it to (containerd and CRI-O refuse it
    too): run_as_group needs run_as_user or run_as_username."""
    if group is not None and user is None and not username:
        raise InvalidArgument(
            f"{what}.run_as_group {group} is set without run_as_user or run_as_username"
        )


MAX_ID = 2**32 - 1  # uid_t


def user_namespace(userns: UserNamespace | None, what: str) -> UserNamespace | None:
    """The user namespace options as kubelet sends them: NODE (the host's, no mappings) or
    POD with exactly one uid and one gid mapping, each mapping container id 0 (the
    container's root) onto a host range. Returns the options of a POD user namespace,
    None for the host's."""
    if userns is None or userns.mode is NamespaceMode.NODE:
        if userns is not None and (userns.uids or userns.gids):
            raise InvalidArgument(f"{what}.mode NODE takes no uids/gids mappings")
        return None
    if userns.mode is not NamespaceMode.POD:
        raise InvalidArgument(
            f"{what}.mode {userns.mode.name} is not supported: a user namespace is the "
            "node's (NODE) or the pod's (POD)"
        )
    for name, maps in (("uids", userns.uids), ("gids", userns.gids)):
        _one_mapping(maps, f"{what}.{name}")
    return userns


def _one_mapping(maps: tuple[IDMapping, ...], what: str) -> None:
    if len(maps) != 1:
        raise InvalidArgument(f"{what} has {len(maps)} mappings; a pod user namespace takes 1")
    m = maps[0]
    if m.container_id != 0:
        raise InvalidArgument(
            f"{what} maps container id {m.container_id}: it must map container id 0 (root)"
        )
    if m.length < 1 or m.host_id + m.length - 1 > MAX_ID:
        raise InvalidArgument(f"{what}: host range {m.host_id}+{m.length} is not valid")
