"""Small constructors for the domain records the spec builder reads."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from cri_async.core.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerSecurity,
    Image,
    ImageSpec,
    NamespaceOptions,
    PodMetadata,
    Sandbox,
    SandboxConfig,
    SandboxSecurity,
)
from cri_async.oci import HostFacts, PodPaths, ResolvedUser, container_spec
from cri_async.oci.defaults import ALL_CAPABILITIES

ALL_CAPS = frozenset(ALL_CAPABILITIES)
HOST = HostFacts(bounding_caps=ALL_CAPS)
POD = PodPaths(
    netns="/run/cri-async/netns/p1",
    ipcns="/run/cri-async/ipcns/p1",
    utsns="/run/cri-async/utsns/p1",
    hostname="web-0",
    resolv_conf="/var/lib/cri-async/pods/p1/resolv.conf",
    hosts="/var/lib/cri-async/pods/p1/hosts",
    hostname_file="/var/lib/cri-async/pods/p1/hostname",
    shm="/run/cri-async/pods/p1/shm",
)
HOST_NET_POD = replace(POD, netns=None, utsns=None, hostname="node-1")
ROOT = ResolvedUser(uid=0, gid=0, additional_gids=(0,), home="/root")
IMAGE = Image(id="sha256:" + "a" * 64, cmd=("/bin/sh",), env=("PATH=/usr/bin:/bin",))


def sandbox(
    *, privileged: bool = False, sysctls: dict[str, str] | None = None, **security: Any
) -> Sandbox:
    config = SandboxConfig(
        metadata=PodMetadata(name="web-0", uid="uid-1", namespace="default"),
        hostname="web-0",
        sysctls=sysctls or {},
        security=SandboxSecurity(privileged=privileged, **security),
    )
    return Sandbox(id="p1", config=config, runtime_handler="", created_at=0)


def container(**changes: Any) -> Container:
    """A container; ``changes`` go to ContainerConfig, ``security=dict(...)`` to its security."""
    security = changes.pop("security", {})
    namespaces = security.pop("namespaces", None)
    sec = ContainerSecurity(**security)
    if namespaces is not None:
        sec = replace(sec, namespaces=namespaces)
    changes.setdefault("image", ImageSpec(image="docker.io/library/busybox:1.36"))
    config = ContainerConfig(metadata=ContainerMetadata(name="app"), security=sec, **changes)
    return Container(
        id="c1",
        sandbox_id="p1",
        config=config,
        image_id=IMAGE.id,
        image_ref="docker.io/library/busybox@sha256:" + "b" * 64,
        created_at=0,
    )


def ns(**modes: Any) -> NamespaceOptions:
    return NamespaceOptions(**modes)


def build(
    ctr: Container | None = None,
    *,
    sb: Sandbox | None = None,
    image: Image = IMAGE,
    pod: PodPaths = POD,
    host: HostFacts = HOST,
    user: ResolvedUser = ROOT,
    **kwargs: Any,
) -> dict[str, Any]:
    spec = container_spec(
        sb or sandbox(),
        ctr or container(),
        image,
        rootfs="/run/cri-async/c1/rootfs",
        pod=pod,
        host=host,
        cgroups_path="kubepods-besteffort-pod1.slice:cri-async:c1",
        user=user,
        **kwargs,
    )
    # Every spec must survive JSON unchanged.
    assert json.loads(json.dumps(spec)) == spec
    return spec


def mount_at(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    matches = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(matches) == 1, (destination, matches)
    found: dict[str, Any] = matches[0]
    return found


def namespace_map(spec: dict[str, Any]) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
