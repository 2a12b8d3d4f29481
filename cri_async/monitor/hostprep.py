"""One-time host preparation the OCI runtimes need on this platform.

crun 1.8.1 refuses every container with a ``cgroupsPath`` on a hybrid host where a controller the
kernel enables (``/proc/cgroups``) has no v1 hierarchy: it fails with "cgroups in hybrid mode not
supported, drop all controllers from cgroupv2". The Debian 12 VM enables ``hugetlb`` but does not
mount it; runc does not care, so mounting it is harmless for runc.

``prepare_host`` is idempotent: it only acts on what is missing and logs every change it makes.
Mounting goes through mount(2) via ctypes (no subprocess, no blocking on another program).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cri_async import linux
from cri_async.cgroupfs import CGROUP_ROOT

__all__ = ["missing_v1_controllers", "prepare_host"]

log = logging.getLogger(__name__)

# Controllers a runtime may expect as their own v1 hierarchy; only mounted if the kernel has
# them enabled but nothing mounts them (net_cls/net_prio/perf_event are optional everywhere).
_WANTED = ("hugetlb",)


def _mounted_v1_controllers(mountinfo: str) -> set[str]:
    found: set[str] = set()
    for line in mountinfo.splitlines():
        # mountinfo: "... - <fstype> <source> <super options>"; the options name controllers.
        _, sep, tail = line.partition(" - ")
        parts = tail.split()
        if not sep or len(parts) < 3 or parts[0] != "cgroup":
            continue
        found.update(parts[2].split(","))
    return found


def _enabled_controllers() -> set[str]:
    enabled: set[str] = set()
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "1":
            enabled.add(fields[0])
    return enabled


def missing_v1_controllers() -> list[str]:
    """Wanted controllers the kernel enables but no mounted v1 hierarchy provides."""
    mounted = _mounted_v1_controllers(Path("/proc/self/mountinfo").read_text())
    enabled = _enabled_controllers()
    return [c for c in _WANTED if c in enabled and c not in mounted]


def _cgroup_v1_host() -> bool:
    # A pure cgroup2 host has cgroup.controllers at the root; then there is nothing to do.
    return CGROUP_ROOT.is_dir() and not (CGROUP_ROOT / "cgroup.controllers").exists()


def prepare_host() -> list[str]:
    """Mount missing v1 controller hierarchies; return what was changed (empty: nothing)."""
    if not _cgroup_v1_host():
        return []
    changed: list[str] = []
    for controller in missing_v1_controllers():
        target = CGROUP_ROOT / controller
        if not target.exists():
            target.mkdir(mode=0o755)
            changed.append(f"created {target}")
            log.info("host prep: created %s", target)
        linux.mount(controller, str(target), "cgroup", 0, controller)
        changed.append(f"mounted cgroup v1 {controller} at {target}")
        log.info("host prep: mounted the cgroup v1 %s hierarchy at %s", controller, target)
    return changed
