"""cgroup v1 and v2 stats: pure parsers (text in, numbers out) and a small reader adapter.

The parsers take file contents; :func:`stats_from_v1` and :func:`stats_from_v2` take a
mapping of file name to content for one cgroup and return a :class:`CgroupStats`. The
:class:`CgroupReader` finds the hierarchies from ``/proc/self/mountinfo`` and reads a
container's cgroup given its OCI ``cgroupsPath`` (cgroupfs driver, e.g.
``/kubepods/burstable/pod<uid>/<cid>``) on any of the three layouts:

* ``v1``: one hierarchy per controller (``/sys/fs/cgroup/{cpu,cpuacct,memory,...}``);
* ``hybrid``: v1 controllers plus a cgroup2 mount without controllers (this project's VM,
  ``/sys/fs/cgroup/unified``). Accounting comes from v1; the cgroup2 group,
  when the runtime created it, still has ``cpu.stat`` and the PSI ``*.pressure`` files;
* ``v2``: the unified hierarchy with the controllers enabled.

Semantics (those of cadvisor and kubelet): working set = usage - inactive_file, floored at 0;
v1 takes the hierarchical ``total_*`` counters of ``memory.stat``; v2 ``rss`` is ``anon``;
a memory limit above 2**62 (v1's "unlimited" is 9223372036854771712) or ``max`` is no limit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from cri_async.core.stats import IoDeviceStats, Psi, PsiData

NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
USER_HZ = 100  # the kernel's USER_HZ, in which cpuacct.stat counts (sysconf(_SC_CLK_TCK))
UNLIMITED_ABOVE = 1 << 62

# Controllers this module reads, v1 (file names are unique across them).
V1_FILES: Mapping[str, tuple[str, ...]] = {
    "cpuacct": ("cpuacct.usage", "cpuacct.stat"),
    "cpu": ("cpu.stat",),
    "memory": (
        "memory.usage_in_bytes",
        "memory.limit_in_bytes",
        "memory.stat",
        "memory.memsw.usage_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.oom_control",
    ),
    "pids": ("pids.current", "pids.max"),
    "blkio": (
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_serviced_recursive",
        "blkio.throttle.io_service_bytes",
        "blkio.throttle.io_serviced",
    ),
}
V2_FILES: tuple[str, ...] = (
    "cpu.stat",
    "memory.current",
    "memory.max",
    "memory.stat",
    "memory.swap.current",
    "memory.swap.max",
    "memory.events",
    "pids.current",
    "pids.max",
    "io.stat",
)
PSI_FILES: tuple[str, ...] = ("cpu.pressure", "memory.pressure", "io.pressure")
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


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """One reading of one cgroup, in kernel units normalised to ns and bytes."""

    version: Literal[1, 2]
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_ns: int | None = None
    memory_usage: int | None = None
    memory_limit: int | None = None  # None: unlimited
    memory_working_set: int | None = None
    memory_rss: int | None = None
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_shmem: int | None = None
    memory_inactive_file: int | None = None
    pgfault: int | None = None
    pgmajfault: int | None = None
    swap_usage: int | None = None
    swap_limit: int | None = None  # None: unlimited or unknown
    oom_kills: int | None = None
    pids_current: int | None = None
    pids_max: int | None = None  # None: unlimited
    io: tuple[IoDeviceStats, ...] = ()
    psi_cpu: Psi | None = None
    psi_memory: Psi | None = None
    psi_io: Psi | None = None


# -- pure parsers ---------------------------------------------------------------------------


def parse_int(text: str) -> int:
    """A single-number file (``cpuacct.usage``, ``memory.current``, ``pids.current``)."""
    return int(text.strip())


def parse_limit(text: str) -> int | None:
    """A limit file: ``max`` (v2) or a number; v1's near-2**63 "unlimited" also gives None."""
    s = text.strip()
    if s == "max":
        return None
    v = int(s)
    return None if v > UNLIMITED_ABOVE or v < 0 else v


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed file: ``key value`` per line (memory.stat, cpu.stat, memory.events,
    cpuacct.stat, memory.oom_control). Lines whose value is not an integer are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _psi_line(fields: list[str]) -> PsiData:
    kv = dict(f.split("=", 1) for f in fields)
    return PsiData(
        avg10=float(kv["avg10"]),
        avg60=float(kv["avg60"]),
        avg300=float(kv["avg300"]),
        total_ns=int(kv["total"]) * NS_PER_US,
    )


def parse_psi(text: str) -> Psi:
    """``some avg10=.. avg60=.. avg300=.. total=<us>`` and optionally ``full ...``."""
    lines: dict[str, PsiData] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("some", "full"):
            lines[parts[0]] = _psi_line(parts[1:])
    if "some" not in lines:
        raise ValueError(f"no 'some' line in pressure file: {text!r}")
    return Psi(some=lines["some"], full=lines.get("full"))


def _devno(s: str) -> tuple[int, int]:
    major, minor = s.split(":", 1)
    return int(major), int(minor)


def parse_blkio_v1(service_bytes: str, serviced: str) -> tuple[IoDeviceStats, ...]:
    """``blkio.throttle.io_service_bytes`` + ``io_serviced``: ``MAJ:MIN Op value`` lines
    (Op in Read/Write/Sync/Async/Discard/Total) and a final ``Total N``."""

    def table(text: str) -> dict[tuple[int, int], dict[str, int]]:
        t: dict[tuple[int, int], dict[str, int]] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                t.setdefault(_devno(parts[0]), {})[parts[1]] = int(parts[2])
        return t

    by, ops = table(service_bytes), table(serviced)
    return tuple(
        IoDeviceStats(
            major=dev[0],
            minor=dev[1],
            read_bytes=by.get(dev, {}).get("Read", 0),
            write_bytes=by.get(dev, {}).get("Write", 0),
            reads=ops.get(dev, {}).get("Read", 0),
            writes=ops.get(dev, {}).get("Write", 0),
        )
        for dev in sorted(by.keys() | ops.keys())
    )


def parse_io_stat(text: str) -> tuple[IoDeviceStats, ...]:
    """v2 ``io.stat``: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = _devno(parts[0])
        kv: dict[str, int] = {}
        for f in parts[1:]:
            k, _, v = f.partition("=")
            with contextlib.suppress(ValueError):
                kv[k] = int(v)
        out.append(
            IoDeviceStats(
                major=major,
                minor=minor,
                read_bytes=kv.get("rbytes", 0),
                write_bytes=kv.get("wbytes", 0),
                reads=kv.get("rios", 0),
                writes=kv.get("wios", 0),
            )
        )
    return tuple(sorted(out, key=lambda d: (d.major, d.minor)))


def working_set(usage: int, inactive_file: int | None) -> int:
    return max(usage - (inactive_file or 0), 0)


def _maybe(files: Mapping[str, str], name: str) -> int | None:
    text = files.get(name)
    if text is None:
        return None
    try:
        return parse_int(text)
    except ValueError:
        return None


def _limit(files: Mapping[str, str], name: str) -> int | None:
    text = files.get(name)
    if text is None:
        return None
    try:
        return parse_limit(text)
    except ValueError:
        return None


def psi_from_files(files: Mapping[str, str]) -> tuple[Psi | None, Psi | None, Psi | None]:
    """(cpu, memory, io) pressure, each None when its file is absent or unparsable."""
    out: list[Psi | None] = []
    for name in PSI_FILES:
        text = files.get(name)
        psi = None
        if text is not None:
            with contextlib.suppress(ValueError, KeyError):
                psi = parse_psi(text)
        out.append(psi)
    return out[0], out[1], out[2]


def stats_from_v1(files: Mapping[str, str], *, user_hz: int = USER_HZ) -> CgroupStats:
    """One v1 cgroup's files (by base name, as read from each controller's directory)."""
    acct = parse_keyed(files.get("cpuacct.stat", ""))
    cpu = parse_keyed(files.get("cpu.stat", ""))
    mem = parse_keyed(files.get("memory.stat", ""))
    oom = parse_keyed(files.get("memory.oom_control", ""))

    def hier(key: str) -> int | None:
        # total_* is hierarchical (includes descendants); a leaf has the same either way.
        v = mem.get("total_" + key)
        return v if v is not None else mem.get(key)

    usage = _maybe(files, "memory.usage_in_bytes")
    inactive = hier("inactive_file")
    limit = _limit(files, "memory.limit_in_bytes")
    memsw_usage = _maybe(files, "memory.memsw.usage_in_bytes")
    memsw_limit = _limit(files, "memory.memsw.limit_in_bytes")
    swap: int | None = None
    if memsw_usage is not None and usage is not None:
        swap = max(memsw_usage - usage, 0)  # memsw counts memory + swap
    elif "total_swap" in mem or "swap" in mem:
        swap = hier("swap")
    swap_limit = None
    if memsw_limit is not None and limit is not None:
        swap_limit = max(memsw_limit - limit, 0)

    def ticks(key: str) -> int | None:
        v = acct.get(key)
        return None if v is None else v * NS_PER_S // user_hz

    # The _recursive files include descendants (what a pod cgroup wants); older kernels and
    # some configurations only have the plain ones.
    suffix = "_recursive" if "blkio.throttle.io_service_bytes_recursive" in files else ""
    bytes_text = files.get("blkio.throttle.io_service_bytes" + suffix, "")
    ops_text = files.get("blkio.throttle.io_serviced" + suffix, "")
    return CgroupStats(
        version=1,
        cpu_usage_ns=_maybe(files, "cpuacct.usage"),
        cpu_user_ns=ticks("user"),
        cpu_system_ns=ticks("system"),
        cpu_periods=cpu.get("nr_periods"),
        cpu_throttled_periods=cpu.get("nr_throttled"),
        cpu_throttled_ns=cpu.get("throttled_time"),
        memory_usage=usage,
        memory_limit=limit,
        memory_working_set=None if usage is None else working_set(usage, inactive),
        memory_rss=hier("rss"),
        memory_cache=hier("cache"),
        memory_mapped_file=hier("mapped_file"),
        memory_shmem=hier("shmem"),
        memory_inactive_file=inactive,
        pgfault=hier("pgfault"),
        pgmajfault=hier("pgmajfault"),
        swap_usage=swap,
        swap_limit=swap_limit,
        oom_kills=oom.get("oom_kill"),
        pids_current=_maybe(files, "pids.current"),
        pids_max=_limit(files, "pids.max"),
        io=parse_blkio_v1(bytes_text, ops_text),
    )


def stats_from_v2(files: Mapping[str, str]) -> CgroupStats:
    """One v2 cgroup's files (by name). PSI files, if present, are parsed too."""
    cpu = parse_keyed(files.get("cpu.stat", ""))
    mem = parse_keyed(files.get("memory.stat", ""))
    events = parse_keyed(files.get("memory.events", ""))

    def us(key: str) -> int | None:
        v = cpu.get(key)
        return None if v is None else v * NS_PER_US

    usage = _maybe(files, "memory.current")
    inactive = mem.get("inactive_file")
    psi_cpu, psi_mem, psi_io = psi_from_files(files)
    return CgroupStats(
        version=2,
        cpu_usage_ns=us("usage_usec"),
        cpu_user_ns=us("user_usec"),
        cpu_system_ns=us("system_usec"),
        cpu_periods=cpu.get("nr_periods"),
        cpu_throttled_periods=cpu.get("nr_throttled"),
        cpu_throttled_ns=us("throttled_usec"),
        memory_usage=usage,
        memory_limit=_limit(files, "memory.max"),
        memory_working_set=None if usage is None else working_set(usage, inactive),
        memory_rss=mem.get("anon"),
        memory_cache=mem.get("file"),
        memory_mapped_file=mem.get("file_mapped"),
        memory_shmem=mem.get("shmem"),
        memory_inactive_file=inactive,
        pgfault=mem.get("pgfault"),
        pgmajfault=mem.get("pgmajfault"),
        swap_usage=_maybe(files, "memory.swap.current"),
        swap_limit=_limit(files, "memory.swap.max"),
        oom_kills=events.get("oom_kill"),
        pids_current=_maybe(files, "pids.current"),
        pids_max=_limit(files, "pids.max"),
        io=parse_io_stat(files.get("io.stat", "")),
        psi_cpu=psi_cpu,
        psi_memory=psi_mem,
        psi_io=psi_io,
    )


# -- layout ---------------------------------------------------------------------------------


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


# -- reader ---------------------------------------------------------------------------------


def relative_cgroup_path(cgroups_path: str) -> str:
    """An OCI cgroupfs ``cgroupsPath`` as a path relative to each hierarchy's root."""
    parts = [p for p in cgroups_path.strip().split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise ValueError(f"cgroups path must not contain '..': {cgroups_path!r}")
    if len(parts) == 1 and parts[0].count(":") == 2:
        raise ValueError(f"systemd-style cgroups path is not supported: {cgroups_path!r}")
    return "/".join(parts)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        return None
    except OSError:
        # Some files refuse reads on some groups (e.g. EOPNOTSUPP, ENODEV); treat as absent.
        return None


class CgroupReader:
    """Blocking reads of one cgroup's stats files. Call from a worker thread."""

    def __init__(
        self, layout: CgroupLayout, *, user_hz: int = USER_HZ, sysfs: str = "/sys"
    ) -> None:
        self.layout = layout
        self.user_hz = user_hz
        self.sysfs = sysfs  # for block device names (/sys/dev/block/MAJ:MIN/uevent)
        self._devnames: dict[tuple[int, int], str] = {}

    @classmethod
    def detect(cls, proc: str = "/proc/self/mountinfo") -> CgroupReader:
        return cls(detect_layout(parse_mountinfo(Path(proc).read_text())))

    def _dirs(self, rel: str) -> dict[str, str]:
        return {c: os.path.join(m, rel) for c, m in self.layout.v1.items()}

    def exists(self, cgroups_path: str) -> bool:
        rel = relative_cgroup_path(cgroups_path)
        if self.layout.mode == "v2":
            assert self.layout.unified is not None
            return os.path.isdir(os.path.join(self.layout.unified, rel))
        return any(os.path.isdir(d) for d in self._dirs(rel).values())

    def read(self, cgroups_path: str) -> CgroupStats | None:
        """The cgroup's stats, or None when the cgroup does not exist (anymore)."""
        rel = relative_cgroup_path(cgroups_path)
        if self.layout.mode == "v2":
            assert self.layout.unified is not None
            d = os.path.join(self.layout.unified, rel)
            if not os.path.isdir(d):
                return None
            files = {}
            for name in (*V2_FILES, *PSI_FILES):
                text = _read(os.path.join(d, name))
                if text is not None:
                    files[name] = text
            return self._named(stats_from_v2(files))

        v1files: dict[str, str] = {}
        found = False
        dirs = self._dirs(rel)
        for controller, names in V1_FILES.items():
            cdir = dirs.get(controller)
            if cdir is None or not os.path.isdir(cdir):
                continue
            found = True
            for name in names:
                text = _read(os.path.join(cdir, name))
                if text is not None:
                    v1files[name] = text
        if not found:
            return None
        stats = stats_from_v1(v1files, user_hz=self.user_hz)
        if self.layout.unified:
            stats = self._with_unified(stats, os.path.join(self.layout.unified, rel))
        if stats.pids_current is None:
            stats = replace(stats, pids_current=self._count_procs(dirs))
        return self._named(stats)

    def _with_unified(self, stats: CgroupStats, d: str) -> CgroupStats:
        """Hybrid: PSI (and CPU usage when cpuacct is missing) from the cgroup2 group."""
        files = {}
        for name in PSI_FILES:
            text = _read(os.path.join(d, name))
            if text is not None:
                files[name] = text
        psi_cpu, psi_mem, psi_io = psi_from_files(files)
        stats = replace(stats, psi_cpu=psi_cpu, psi_memory=psi_mem, psi_io=psi_io)
        if stats.cpu_usage_ns is None:
            cpu_stat = _read(os.path.join(d, "cpu.stat"))
            if cpu_stat is not None:
                v2 = stats_from_v2({"cpu.stat": cpu_stat})
                stats = replace(
                    stats,
                    cpu_usage_ns=v2.cpu_usage_ns,
                    cpu_user_ns=v2.cpu_user_ns,
                    cpu_system_ns=v2.cpu_system_ns,
                )
        return stats

    def _count_procs(self, dirs: Mapping[str, str]) -> int | None:
        """Without the pids controller: the number of tasks listed in any hierarchy."""
        for d in dirs.values():
            text = _read(os.path.join(d, "tasks"))
            if text is not None:
                return len(text.split())
        return None

    def _named(self, stats: CgroupStats) -> CgroupStats:
        if not stats.io:
            return stats
        return replace(stats, io=tuple(replace(d, name=self._devname(d)) for d in stats.io))

    def _devname(self, d: IoDeviceStats) -> str:
        key = (d.major, d.minor)
        name = self._devnames.get(key)
        if name is None:
            name = f"{d.major}:{d.minor}"
            uevent = _read(f"{self.sysfs}/dev/block/{d.major}:{d.minor}/uevent")
            for line in (uevent or "").splitlines():
                if line.startswith("DEVNAME="):
                    name = "/dev/" + line.removeprefix("DEVNAME=")
            self._devnames[key] = name
        return name
