"""Building a container's OCI runtime spec (config.json) from the CRI domain model.

Everything here is pure: facts about the host (capabilities we hold, our oom_score_adj, ...),
the pod's pinned namespaces and files, the resolved user and, for a Localhost seccomp
profile, the profile itself come in as arguments. The rules are those of containerd's CRI
plugin, which is what kubelet and its conformance tests expect; where this builder differs
the docstrings say so.

The parts live beside this module: process.py (command, environment, user, capabilities),
namespaces.py (namespaces and sysctls), security.py (LSM, seccomp, hidden paths) and
resources.py (devices and cgroup resources); the inputs are the records of inputs.py.
This module assembles them and keeps every public name importable from here.

The output targets runtime-spec 1.1 (it uses ``defaultErrnoRet``, ``errnoRet``,
``linux.resources.unified`` and the ``rro`` mount option); runc >= 1.1 and crun accept it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cri_async.core.model import Container, Image, Mount, Sandbox
from cri_async.oci.errors import SpecError
from cri_async.oci.inputs import DeviceNode, HostFacts, PodPaths
from cri_async.oci.mounts import build_mounts, id_mappings
from cri_async.oci.namespaces import (
    namespace_entries,
    normalize_sysctl,
    pod_sysctls,
    pod_user_namespace,
)
from cri_async.oci.process import (
    base_process,
    exec_process,
    merge_env,
    oom_score_adj,
    process_args,
)
from cri_async.oci.resources import cgroup_resources, device_entries, linux_resources
from cri_async.oci.security import hidden_paths, seccomp_section, selinux_labels
from cri_async.oci.user import ResolvedUser

__all__ = [
    "ANNOTATION_CONTAINER_NAME",
    "ANNOTATION_CONTAINER_TYPE",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_SANDBOX_ID",
    "ANNOTATION_SANDBOX_NAME",
    "ANNOTATION_SANDBOX_NAMESPACE",
    "ANNOTATION_SANDBOX_UID",
    "OCI_VERSION",
    "DeviceNode",
    "HostFacts",
    "PodPaths",
    "SpecError",
    "container_spec",
    "exec_process",
    "linux_resources",
    "merge_env",
    "normalize_sysctl",
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

    process = base_process(
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
    process["oomScoreAdj"] = oom_score_adj(resources, host)

    userns = pod_user_namespace(sandbox, container)
    namespaces = namespace_entries(container, pod, host, target_pidns, userns)
    kinds = {ns["type"] for ns in namespaces}

    mounts, rootfs_propagation = build_mounts(
        config.mounts,
        _pod_mounts(pod, readonly_rootfs=sec.readonly_rootfs),
        privileged=privileged,
        bind_host_sys=userns is not None and pod.netns is None,
        rro_supported=host.recursive_read_only,
    )

    linux_devices, device_rules = device_entries(
        config, devices or {}, host_devices, privileged=privileged
    )
    masked, readonly = hidden_paths(sec.masked_paths, sec.readonly_paths, privileged=privileged)

    linux: dict[str, Any] = {
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
        "resources": cgroup_resources(resources, device_rules, host),
        "devices": linux_devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    }
    if userns is not None:
        linux["uidMappings"] = id_mappings(userns.uids)
        linux["gidMappings"] = id_mappings(userns.gids)
    sysctls = pod_sysctls(
        sandbox.config.sysctls,
        net_private="network" in kinds,
        ipc_private="ipc" in kinds,
        uts_private="uts" in kinds,
    )
    if sysctls:
        linux["sysctl"] = sysctls
    seccomp = seccomp_section(
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
    _, mount_label = selinux_labels(sec.selinux, privileged=privileged, host=host)
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
