"""The host's cgroup tree, in one place: where the hierarchies are, joining a process to a
cgroup, removing the cgroups we made, and writing v1 resource files directly (for runtimes
without an ``update`` command, runsc, and for pod-level cgroups, which no OCI runtime owns).
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path

from cri_async.core.errors import FailedPrecondition, InvalidArgument
from cri_async.core.model import Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """Every mounted hierarchy: the root itself on a pure cgroup2 host; on v1 and hybrid
    hosts one per controller (plus name=systemd and unified) below it."""
    if (root / "cgroup.procs").exists():
        return [root]
    try:
        return [h for h in sorted(root.iterdir()) if (h / "cgroup.procs").exists()]
    except OSError:
        return []


def join(pid: int, cgroup: str, root: Path = CGROUP_ROOT) -> None:
    """Move ``pid`` into ``cgroup`` in every mounted hierarchy (created when missing)."""
    rel = Path(cgroup.strip("/"))
    for hierarchy in hierarchies(root):
        target = hierarchy
        for part in rel.parts:
            parent, target = target, target / part
            if target.is_dir():
                continue
            target.mkdir(exist_ok=True)
            # A new v1 cpuset starts with no cpus/mems and refuses tasks (ENOSPC) until
            # they are set; inherit the parent's.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (target / name).exists() and not (target / name).read_text().strip():
                    (target / name).write_text((parent / name).read_text())
        (target / "cgroup.procs").write_text(f"{pid}\n")


def ensure(cgroup: str, controllers: tuple[str, ...], root: Path = CGROUP_ROOT) -> None:
    """Create ``cgroup`` in the v1 hierarchies of ``controllers``."""
    for controller in controllers:
        (root / controller / cgroup.strip("/")).mkdir(parents=True, exist_ok=True)


def remove(cgroup: str, root: Path = CGROUP_ROOT) -> None:
    """Remove the (now empty) ``cgroup`` from every hierarchy; runtimes leave parents."""
    for h in [root, *hierarchies(root)]:
        with contextlib.suppress(OSError):
            (h / cgroup.strip("/")).rmdir()


def _write_cgroup(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def write_cgroup_resources(cgroup: str, r: Resources, root: Path = CGROUP_ROOT) -> list[str]:
    """Apply ``r`` (zero fields untouched) to the v1 hierarchies' ``cgroup`` dirs, as
    ``runc update`` would; the files written. FailedPrecondition where that is impossible."""
    rel = cgroup.strip("/")
    written: list[str] = []

    def put(controller: str, name: str, value: object) -> None:
        d = root / controller / rel
        if not d.is_dir():
            raise FailedPrecondition(f"cgroup {d} does not exist (is the container running?)")
        _write_cgroup(d / name, str(value))
        written.append(f"{controller}/{rel}/{name}")

    if r.unified:
        raise InvalidArgument("unified (cgroup v2) resources need cgroup v2; this host is v1")
    if not (root / "memory").is_dir() and not (root / "cpu").is_dir():
        raise FailedPrecondition(
            "cgroup resources are written to v1 files; this host has no v1 hierarchy"
        )
    if r.cpu_shares:
        put("cpu", "cpu.shares", r.cpu_shares)
    if r.cpu_period:
        put("cpu", "cpu.cfs_period_us", r.cpu_period)
    if r.cpu_quota:
        put("cpu", "cpu.cfs_quota_us", r.cpu_quota)
    if r.cpuset_cpus:
        put("cpuset", "cpuset.cpus", r.cpuset_cpus)
    if r.cpuset_mems:
        put("cpuset", "cpuset.mems", r.cpuset_mems)
    if r.memory_limit_in_bytes:
        limit = r.memory_limit_in_bytes
        swap = r.memory_swap_limit_in_bytes or limit
        steps = [("memory.limit_in_bytes", limit)]
        if (root / "memory" / rel / "memory.memsw.limit_in_bytes").exists():
            steps.append(("memory.memsw.limit_in_bytes", swap))
        # memsw must stay >= limit after every write: raising both needs memsw first.
        try:
            for name, value in steps:
                put("memory", name, value)
        except OSError as e:
            if e.errno != errno.EINVAL or len(steps) < 2:
                raise
            for name, value in reversed(steps):
                put("memory", name, value)
    for h in r.hugepage_limits:
        size = h.page_size if h.page_size.endswith("B") else f"{h.page_size}B"
        put("hugetlb", f"hugetlb.{size}.limit_in_bytes", h.limit)
    return written
