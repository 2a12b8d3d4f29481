"""Reading one cgroup's stats files (blocking: call from a worker thread).

:class:`CgroupReader` finds the hierarchies from ``/proc/self/mountinfo``
(``cgrouplayout``) and reads a container's cgroup given its OCI ``cgroupsPath`` (cgroupfs
driver, e.g. ``/kubepods/burstable/pod<uid>/<cid>``) on a v1, hybrid or v2 host; the
parsing is ``cgroupstats``'.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from cri_async.core.stats import IoDeviceStats

from .cgrouplayout import CgroupLayout, detect_layout, parse_mountinfo, relative_cgroup_path
from .cgroupstats import (
    PSI_FILES,
    USER_HZ,
    V1_FILES,
    V2_FILES,
    CgroupStats,
    psi_from_files,
    stats_from_v1,
    stats_from_v2,
)


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
