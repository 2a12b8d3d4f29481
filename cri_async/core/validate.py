"""Request validation shared by pod and container creates. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from cri_async.core.errors import InvalidArgument

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
