"""Request validation shared by pod and container creates. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from cri_async.core.errors import InvalidArgument
from cri_async.core.model import IDMapping, NamespaceMode, UserNamespace

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
