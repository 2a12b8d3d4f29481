"""cgroup v1 and v2 stats files: pure parsers, text in, numbers out.

:func:`stats_from_v1` and :func:`stats_from_v2` take a mapping of file name to content for
one cgroup and return a :class:`CgroupStats`; the reader (``cgroups.py``) gathers the files.

Semantics (those of cadvisor and kubelet): working set = usage - inactive_file, floored at 0;
v1 takes the hierarchical ``total_*`` counters of ``memory.stat``; v2 ``rss`` is ``anon``;
a memory limit above 2**62 (v1's "unlimited" is 9223372036854771712) or ``max`` is no limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
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
