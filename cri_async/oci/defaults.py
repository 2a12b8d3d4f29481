"""Fixed facts the spec builder starts from: capabilities, paths, mounts, device rules.

The values are the ones Kubernetes users get from the common runtimes (Docker, containerd's
CRI plugin, CRI-O), so that a pod behaves the same here: the 14 default capabilities, the
/proc and /sys paths kubelet expects to be masked or read-only, and the standard set of
pseudo-filesystem mounts.
"""

from __future__ import annotations

from typing import Any

# Every Linux capability, in kernel bit order (include/uapi/linux/capability.h).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",  # 0
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",  # 5
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",  # 10
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",  # 15
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",  # 20
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",  # 25
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",  # 30
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",  # 35
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",  # 40
)

# What an unprivileged container gets (the Docker / containerd / CRI-O default set).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def capabilities_from_mask(mask: int | str) -> frozenset[str]:
    """Capability names set in a mask such as the ``CapBnd:`` line of /proc/self/status.

    A string is read as hexadecimal. Bits beyond the capabilities known here are left out:
    there is no name a runtime would accept for them.
    """
    value = int(mask, 16) if isinstance(mask, str) else mask
    return frozenset(name for bit, name in enumerate(ALL_CAPABILITIES) if value >> bit & 1)


# Paths kubelet asks to hide for the Default procMount type.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_PATH_ENV = "PATH=" + DEFAULT_PATH

# RLIMIT_NOFILE granted when the host allows it (what containerd's systemd unit gives).
DEFAULT_NOFILE = 1048576


def default_mounts(*, privileged: bool = False) -> list[dict[str, Any]]:
    """The pseudo-filesystems every container gets, parents first.

    /run is not mounted (as in containerd's CRI plugin: images own their /run). A privileged
    container gets /sys and /sys/fs/cgroup read-write.
    """
    sys_mode = "rw" if privileged else "ro"
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", sys_mode],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode],
        },
    ]


def _char(major: int, minor: int | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
    if minor is not None:
        rule["minor"] = minor
    rule["access"] = "rwm"
    return rule


# Device cgroup rules: deny everything, then allow mknod of any node (it is the cgroup that
# guards access, not creation) and the standard character devices runtimes create in /dev.
DEFAULT_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    _char(1, 3),  # /dev/null
    _char(1, 5),  # /dev/zero
    _char(1, 7),  # /dev/full
    _char(1, 8),  # /dev/random
    _char(1, 9),  # /dev/urandom
    _char(5, 0),  # /dev/tty
    _char(5, 2),  # /dev/ptmx
    _char(136, None),  # /dev/pts/*
)

ALLOW_ALL_DEVICES: dict[str, Any] = {"allow": True, "access": "rwm"}
