"""Where the cgroup hierarchies are: ``/proc/self/mountinfo`` parsed into the v1 controller
mounts and the cgroup2 mount, the layout they make, and OCI ``cgroupsPath`` values as paths
below each hierarchy (pure).

The three layouts:

* ``v1``: one hierarchy per controller (``/sys/fs/cgroup/{cpu,cpuacct,memory,...}``);
* ``hybrid``: v1 controllers plus a cgroup2 mount without controllers (e.g.
  ``/sys/fs/cgroup/unified``). Accounting comes from v1; the cgroup2 group, when the runtime
  created it, still has ``cpu.stat`` and the PSI ``*.pressure`` files;
* ``v2``: the unified hierarchy with the controllers enabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

V1_CONTROLLERS = frozenset(
    [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "hugetlb",
        "net_cls",
        "net_prio",
        "perf_event",
        "rdma",
        "misc",
    ]
)


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(s):
        esc = s[i + 1 : i + 4]
        if s[i] == "\\" and len(esc) == 3 and esc.isdigit():
            out.append(chr(int(esc, 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CgroupMounts:
    v1: Mapping[str, str] = field(default_factory=dict)  # controller -> mount point
    unified: str | None = None  # the cgroup2 mount point


def parse_mountinfo(text: str) -> CgroupMounts:
    """The cgroup hierarchies of a ``/proc/<pid>/mountinfo``: the first mount of each v1
    controller (co-mounted ones, e.g. ``cpu,cpuacct``, share a mount point) and the first
    cgroup2 mount."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mountpoint, fstype, options = _unescape(fields[4]), tail[0], tail[2]
        if fstype == "cgroup2":
            unified = unified or mountpoint
        elif fstype == "cgroup":
            for opt in options.split(","):
                if opt in V1_CONTROLLERS:
                    v1.setdefault(opt, mountpoint)
    return CgroupMounts(v1=v1, unified=unified)


Mode = Literal["v1", "hybrid", "v2"]


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    mode: Mode
    v1: Mapping[str, str]  # controller -> mount point (empty on v2)
    unified: str | None  # cgroup2 mount point (v2: the accounting; hybrid: PSI only)


def detect_layout(mounts: CgroupMounts) -> CgroupLayout:
    """v1 (``hybrid`` when a cgroup2 mount exists too) as soon as a v1 hierarchy carries the
    memory or cpuacct controller: a controller is bound to one hierarchy only, so the cgroup2
    mount then cannot account for it. Otherwise the cgroup2 mount is the v2 layout."""
    if "memory" in mounts.v1 or "cpuacct" in mounts.v1:
        mode: Mode = "hybrid" if mounts.unified else "v1"
        return CgroupLayout(mode=mode, v1=dict(mounts.v1), unified=mounts.unified)
    if mounts.unified:
        return CgroupLayout(mode="v2", v1={}, unified=mounts.unified)
    raise ValueError("no cgroup hierarchy with the memory or cpuacct controller is mounted")


def relative_cgroup_path(cgroups_path: str) -> str:
    """An OCI cgroupfs ``cgroupsPath`` as a path relative to each hierarchy's root."""
    parts = [p for p in cgroups_path.strip().split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise ValueError(f"cgroups path must not contain '..': {cgroups_path!r}")
    if len(parts) == 1 and parts[0].count(":") == 2:
        raise ValueError(f"systemd-style cgroups path is not supported: {cgroups_path!r}")
    return "/".join(parts)
