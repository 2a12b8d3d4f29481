"""A container's files when its pod has a user namespace of its own: what the image's root
filesystem is mapped with, the pod's volumes idmapped through the pod's user namespace,
and the host paths the runtime must reach from inside that namespace. Blocking helpers:
``Bundles`` calls them in a worker thread.

Volumes: kubelet gives the mounts of such a pod's volumes the pod's uid/gid mappings. They
are bound through an idmapped mount of the pod's user namespace under the bundle
(``<bundle>/volumes/<n>``) and the runtime gets a plain bind of that; the staged mounts are
detached once the runtime has created the container (its mount namespace keeps its own
copies). Doing it here rather than through the runtime's ``idmap`` mount option works the
same on every runtime (crun 1.8.1 fails ``mount_setattr`` on its own idmapped mounts for a
container that joins the pod's PID namespace).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cri_async import files, linux, rootfs
from cri_async.core.model import Container, Mount, Sandbox, UserNamespace
from cri_async.oci import spec as oci
from cri_async.oci.mounts import idmapped_volumes
from cri_async.oci.namespaces import pod_user_namespace

log = logging.getLogger(__name__)

VOLUMES = "volumes"


def container_userns(
    sandbox: Sandbox, container: Container, pod: oci.PodPaths
) -> UserNamespace | None:
    """The pod user namespace the container runs in (SpecError for options that do not
    match the pod's); LookupError if the pod has none pinned."""
    userns = pod_user_namespace(sandbox, container)
    if userns is not None and not pod.userns:
        raise LookupError(f"pod sandbox {sandbox.id} has no user namespace of its own")
    return userns


def rootfs_idmap(userns: UserNamespace, pod: oci.PodPaths, bundle: Path) -> rootfs.Idmap:
    assert pod.userns is not None
    uid, gid = userns.root
    return rootfs.Idmap(pod.userns, uid, gid, bundle / "idmap")


def make_reachable(bundle: Path, pod: oci.PodPaths) -> None:
    """The runtime opens the rootfs and the pod's files from inside the pod's user
    namespace, where our directories' owner (host root) is not mapped: they must be
    searchable by everyone (runtimes create their state dirs' parents 0700)."""
    targets = [bundle / "rootfs"]
    targets += [Path(p).parent for p in (pod.hosts, pod.resolv_conf, pod.hostname_file) if p]
    for target in targets:
        for d in files.allow_traversal(target):
            log.info("made %s searchable for containers in user namespaces", d)


def stage_volumes(
    bundle: Path, mounts: Sequence[Mount], userns: UserNamespace, userns_path: str
) -> tuple[Mount, ...]:
    """``mounts`` with each one kubelet wants idmapped replaced by a plain mount of its
    idmapped bind under the bundle (SpecUnsupported for mappings not the pod's)."""
    wanted = {id(m) for m in idmapped_volumes(mounts, userns)}
    if not wanted:
        return tuple(mounts)
    stage = bundle / VOLUMES
    stage.mkdir(exist_ok=True)
    out: list[Mount] = []
    fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i, m in enumerate(mounts):
            if id(m) not in wanted:
                out.append(m)
                continue
            target = stage / str(i)
            if os.path.isdir(m.host_path):
                target.mkdir(exist_ok=True)
            else:
                target.touch()
            linux.idmapped_bind(m.host_path, str(target), fd)
            linux.mount("none", str(target), None, linux.MS_PRIVATE)
            out.append(replace(m, host_path=str(target), uid_mappings=(), gid_mappings=()))
    finally:
        os.close(fd)
    return tuple(out)


def unstage_volumes(bundle: Path) -> None:
    """Detach the staged volume mounts and remove their mount points. Never deletes what is
    below one: a mount point that is still mounted fails the removal (OSError)."""
    stage = bundle / VOLUMES
    if not stage.is_dir():
        return
    for name in os.listdir(stage):
        point = stage / name
        linux.umount(str(point))
        if point.is_dir():
            point.rmdir()
        else:
            point.unlink()
    stage.rmdir()
