"""Stats samples: frozen dataclasses shaped after the CRI stats messages.

The gRPC edge converts these to ``ContainerStats`` / ``PodSandboxStats`` (api.proto, section
"Stats and metrics"); nothing here imports protobuf. Timestamps are wall-clock nanoseconds
since the epoch, as CRI wants them. A field is ``None`` where the kernel gave no value (a
missing controller or file), which the edge maps to an unset ``UInt64Value``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PsiData:
    """One line of a ``*.pressure`` file. ``total_ns`` is the kernel's microsecond total x 1000
    (CRI's ``PsiData.Total`` is in nanoseconds); the averages are percentages."""

    avg10: float
    avg60: float
    avg300: float
    total_ns: int


@dataclass(frozen=True, slots=True)
class Psi:
    some: PsiData
    full: PsiData | None = None  # cpu.pressure has no "full" line before Linux 5.13


@dataclass(frozen=True, slots=True)
class CpuStats:
    timestamp: int
    usage_core_nano_seconds: int  # cumulative
    usage_nano_cores: int | None = None  # rate between the last two samples
    user_nano_seconds: int | None = None
    system_nano_seconds: int | None = None
    cfs_periods: int | None = None
    cfs_throttled_periods: int | None = None
    cfs_throttled_nano_seconds: int | None = None
    psi: Psi | None = None


@dataclass(frozen=True, slots=True)
class MemoryStats:
    timestamp: int
    working_set_bytes: int  # usage - inactive_file, floored at 0 (what kubelet evicts on)
    available_bytes: int | None  # limit - working set; None without a limit
    usage_bytes: int
    rss_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    cache_bytes: int | None = None
    mapped_file_bytes: int | None = None
    limit_bytes: int | None = None  # None: unlimited
    oom_kills: int | None = None
    psi: Psi | None = None


@dataclass(frozen=True, slots=True)
class SwapStats:
    timestamp: int
    swap_usage_bytes: int
    swap_available_bytes: int | None = None  # None without a swap limit


@dataclass(frozen=True, slots=True)
class IoDeviceStats:
    major: int
    minor: int
    read_bytes: int
    write_bytes: int
    reads: int
    writes: int
    name: str = ""  # e.g. "/dev/vda" when the adapter could resolve it


@dataclass(frozen=True, slots=True)
class IoStats:
    timestamp: int
    devices: tuple[IoDeviceStats, ...] = ()
    psi: Psi | None = None


@dataclass(frozen=True, slots=True)
class ProcessStats:
    timestamp: int
    process_count: int  # pids.current: tasks (threads included), as containerd reports it
    process_limit: int | None = None  # pids.max; None: unlimited


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


DEFAULT_INTERFACE = "eth0"  # kubelet's network.DefaultInterfaceName


@dataclass(frozen=True, slots=True)
class NetworkStats:
    timestamp: int
    interfaces: tuple[InterfaceStats, ...]

    @property
    def default_interface(self) -> InterfaceStats | None:
        for i in self.interfaces:
            if i.name == DEFAULT_INTERFACE:
                return i
        return None


@dataclass(frozen=True, slots=True)
class FilesystemStats:
    """A container's writable layer: bytes on disk (du-style, hard links once) and inodes."""

    timestamp: int
    mountpoint: str  # the filesystem holding the layer (CRI FilesystemIdentifier)
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True, slots=True)
class ContainerSample:
    container_id: str
    sandbox_id: str
    cgroups_path: str
    timestamp: int
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    swap: SwapStats | None = None
    io: IoStats | None = None
    process: ProcessStats | None = None
    writable_layer: FilesystemStats | None = None


@dataclass(frozen=True, slots=True)
class PodSample:
    """Pod-level numbers come from the pod cgroup (``cgroup_parent``) when it can be read;
    otherwise cpu/memory/process are the sums over the pod's container samples."""

    sandbox_id: str
    cgroup_parent: str
    timestamp: int
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    swap: SwapStats | None = None
    io: IoStats | None = None
    process: ProcessStats | None = None
    network: NetworkStats | None = None
    containers: tuple[ContainerSample, ...] = ()
