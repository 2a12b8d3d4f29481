"""What the spec builder is told by its caller: facts about the host and this runtime's
process, where the pod's namespaces and files are, and the device nodes found by stat(2).
The caller gathers them (I/O); the builder only reads them."""

from __future__ import annotations

from dataclasses import dataclass

from cri_async.oci.defaults import DEFAULT_NOFILE


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the host and this runtime's own process allow (gathered by the caller)."""

    # Our bounding set (CapBnd of /proc/self/status, see defaults.capabilities_from_mask):
    # requested capabilities are intersected with it.
    bounding_caps: frozenset[str]
    # Our own oom_score_adj: lowering below it needs CAP_SYS_RESOURCE, so values are clamped up.
    min_oom_score_adj: int = 0
    # The RLIMIT_NOFILE hard limit we hold and can pass on.
    nofile_hard: int = DEFAULT_NOFILE
    # Kernel LSM support; profiles and labels are left out when False.
    apparmor: bool = False
    selinux: bool = False
    cgroup_v2: bool = False
    # Architecture for the seccomp profile ("x86_64", "aarch64", ...).
    arch: str = "x86_64"
    # Swap accounting available (memory.memsw.* on v1, memory.swap.max on v2).
    swap: bool = True
    # hugetlb controller available; without it hugepage limits are left out (containerd
    # tolerates a missing controller by default, and kubelet sends limits regardless).
    hugetlb: bool = True
    # The runtime supports the "rro" mount option (runc >= 1.1 on Linux >= 5.12).
    recursive_read_only: bool = True
    # The AppArmor profile standing for RuntimeDefault, loaded by the caller (e.g.
    # "cri-async-default"); "" leaves RuntimeDefault containers without a profile.
    apparmor_default_profile: str = ""


@dataclass(frozen=True, slots=True)
class PodPaths:
    """Where the pod's shared namespaces and files are on the host."""

    netns: str | None  # pinned pod netns; None = host network
    ipcns: str | None  # None = host IPC
    utsns: str | None  # None = host UTS
    pidns: str | None = None  # PID mode POD: the pod's pinned pid ns (None: a new one each)
    hostname: str = ""
    resolv_conf: str | None = None
    hosts: str | None = None
    hostname_file: str | None = None
    shm: str | None = None  # the pod's /dev/shm directory to bind (None: a private tmpfs)
    userns: str | None = None  # pinned pod user namespace (None: created with the mappings)


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A device node on the host, as the caller found it by stat(2)."""

    path: str  # host path (symlinks resolved)
    type: str  # "c", "b", "u" or "p"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0
