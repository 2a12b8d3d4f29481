"""The container's mount list: defaults, the pod's files, the CRI mounts; parents first."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from cri_async.core.model import IDMapping, Mount, Propagation, UserNamespace
from cri_async.oci.defaults import default_mounts
from cri_async.oci.errors import SpecError, SpecUnsupported

_PROPAGATION_OPTION = {
    Propagation.PRIVATE: "rprivate",
    Propagation.HOST_TO_CONTAINER: "rslave",
    Propagation.BIDIRECTIONAL: "rshared",
}


def clean(path: str) -> str:
    """A mount destination in canonical form ("/a//b/../c/" -> "/a/c")."""
    # normpath keeps a leading "//" (POSIX leaves its meaning open); Linux does not care.
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def depth(path: str) -> int:
    """Number of components of a destination: "/" is 0, "/a/b" is 2."""
    return len([p for p in clean(path).split("/") if p])


def id_mappings(mappings: Sequence[IDMapping]) -> list[dict[str, int]]:
    return [
        {"containerID": m.container_id, "hostID": m.host_id, "size": m.length} for m in mappings
    ]


def bind_mount(m: Mount, *, rro_supported: bool = True) -> dict[str, Any]:
    """One CRI mount as an OCI bind mount.

    Always ``rbind`` (mounts below the host path come along), the propagation as asked and
    ``ro``/``rw``. A plain ``ro`` only covers the top mount; recursive_read_only gives ``rro``
    (mount_setattr(2) with AT_RECURSIVE: runc >= 1.1 on Linux >= 5.12), which needs private
    propagation, or a read-only submount could be made writable through a peer.
    """
    if not m.container_path.startswith("/"):
        raise SpecError(f"mount destination {m.container_path!r} is not an absolute path")
    if clean(m.container_path) == "/":
        raise SpecError("a mount cannot replace the container's root directory")
    if not m.host_path:
        what = "image volume" if m.image is not None else "mount"
        raise SpecError(f"{what} at {m.container_path!r} has no host path")
    if bool(m.uid_mappings) != bool(m.gid_mappings):
        raise SpecError(f"mount at {m.container_path!r}: uid and gid mappings go together")
    options = ["rbind", _PROPAGATION_OPTION[m.propagation]]
    if m.recursive_read_only:
        if not m.readonly:
            raise SpecError(f"mount at {m.container_path!r}: recursive read-only needs readonly")
        if m.propagation is not Propagation.PRIVATE:
            raise SpecError(
                f"mount at {m.container_path!r}: recursive read-only needs private propagation"
            )
        if not rro_supported:
            raise SpecError("recursive read-only mounts are not supported on this host")
        options.append("rro")
    else:
        options.append("ro" if m.readonly else "rw")
    options += [o for o in m.options if o not in options]
    out: dict[str, Any] = {
        "destination": m.container_path,
        "type": "bind",
        "source": m.host_path,
        "options": options,
    }
    if m.uid_mappings:
        out["uidMappings"] = id_mappings(m.uid_mappings)
        out["gidMappings"] = id_mappings(m.gid_mappings)
    return out


def idmapped_volumes(mounts: Sequence[Mount], userns: UserNamespace) -> list[Mount]:
    """The mounts of a container in ``userns`` that kubelet wants idmapped (uid/gid mappings
    given: a pod's volumes). The caller idmaps them itself, through the pod's user
    namespace, so their mappings must be the pod's."""
    out = []
    for m in mounts:
        if not (m.uid_mappings or m.gid_mappings):
            continue
        if (m.uid_mappings, m.gid_mappings) != (userns.uids, userns.gids):
            raise SpecUnsupported(
                f"mount at {m.container_path!r}: uid/gid mappings other than the pod's user "
                "namespace's cannot be applied"
            )
        out.append(m)
    return out


def build_mounts(
    cri_mounts: Sequence[Mount],
    pod_mounts: Sequence[Mount],
    *,
    privileged: bool,
    bind_host_sys: bool = False,
    rro_supported: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """All mounts of the container and the rootfs propagation they need (None: default).

    ``pod_mounts`` (/etc/hosts, /dev/shm, ...) give way to a CRI mount at the same place;
    default mounts give way to either, and everything under /dev goes if /dev itself is
    supplied. The result is stably sorted by depth, so a parent precedes its children.
    ``bind_host_sys`` replaces the sysfs mount by a read-only bind of the host's /sys (a
    user-namespaced container on the host network cannot mount sysfs).
    """
    supplied_at = {clean(m.container_path) for m in cri_mounts}
    supplied = list(cri_mounts) + [
        m for m in pod_mounts if clean(m.container_path) not in supplied_at
    ]
    taken = {clean(m.container_path) for m in supplied}
    defaults = []
    for d in default_mounts(privileged=privileged):
        dst = d["destination"]
        if dst in taken or ("/dev" in taken and dst.startswith("/dev/")):
            continue
        if dst == "/sys" and bind_host_sys:
            d = {
                "destination": "/sys",
                "type": "bind",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "rro"],
            }
        defaults.append(d)

    propagation: str | None = None
    if any(m.propagation is Propagation.BIDIRECTIONAL for m in supplied):
        propagation = "rshared"
    elif any(m.propagation is Propagation.HOST_TO_CONTAINER for m in supplied):
        propagation = "rslave"

    mounts = defaults + [bind_mount(m, rro_supported=rro_supported) for m in supplied]
    mounts.sort(key=lambda m: depth(m["destination"]))
    return mounts, propagation
