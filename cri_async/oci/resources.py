"""The container's devices and cgroup resources in the spec (``linux.devices``,
``linux.resources``), and the resources alone for ``runc update`` (pure)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from cri_async.core.model import ContainerConfig, Resources
from cri_async.oci.defaults import ALLOW_ALL_DEVICES, DEFAULT_DEVICE_RULES
from cri_async.oci.errors import SpecError
from cri_async.oci.inputs import DeviceNode, HostFacts


def device_entries(
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


def cgroup_resources(
    resources: Resources | None, device_rules: list[dict[str, Any]], host: HostFacts
) -> dict[str, Any]:
    """``linux.resources``: the device rules, then what the CRI resources ask for."""
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
    out = cgroup_resources(resources, [], host)
    del out["devices"]
    return out
