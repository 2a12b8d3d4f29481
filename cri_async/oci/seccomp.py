"""Seccomp profiles as OCI ``linux.seccomp`` objects.

``runtime_default_profile`` is the RuntimeDefault profile Kubernetes users know from Docker
and containerd: everything not listed fails with EPERM; a large allowlist of ordinary
syscalls; syscalls guarded by a capability (mount, ptrace, bpf, ...) are allowed only when that
capability is in the container's bounding set; namespace-creating ``clone`` flags and
``clone3`` are refused without CAP_SYS_ADMIN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
EPERM = 1
ENOSYS = 38

AF_ALG = 38
AF_VSOCK = 40

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
# | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)

# Native architecture -> the seccomp architectures a process on it may use.
_ARCHES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

# Syscalls needing nothing special. The list is the one of the Docker / containerd default
# profile; names a kernel or libseccomp does not know are skipped by the runtime.
_BASE_SYSCALL_TEXT = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl
io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup
io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr _llseek
lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat
lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat
mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep
newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead
readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount
statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times
tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat
utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""
_BASE_SYSCALLS: tuple[str, ...] = tuple(_BASE_SYSCALL_TEXT.split())

# Allowed on every kernel this runtime supports (>= 4.8, where seccomp can no longer be
# bypassed through ptrace).
_PTRACE_SYSCALLS = ("process_vm_readv", "process_vm_writev", "ptrace")

_ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": (
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache", "riscv_hwprobe"),
}

# Capability -> syscalls it unlocks, in capability order for a stable output.
_CAP_SYSCALLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    (
        "CAP_SYS_ADMIN",
        (
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ),
    ),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "init_module", "finit_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    (
        "CAP_SYS_PTRACE",
        (
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ),
    ),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)

# personality(2) personas that are harmless: PER_LINUX, PER_LINUX32 and their UNAME26
# variants, and 0xffffffff (query the current persona).
_PERSONAS = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)


def native_arch(arch: str) -> str:
    """Normalise an architecture name (``uname -m`` or Go style) to ``uname -m`` style."""
    name = _ARCH_ALIASES.get(arch, arch)
    if name not in _ARCHES:
        raise ValueError(f"no seccomp profile for architecture {arch!r}")
    return name


def seccomp_architectures(arch: str) -> list[str]:
    """The SCMP_ARCH_* values a process on ``arch`` may use (native first)."""
    return list(_ARCHES[native_arch(arch)])


def _rule(names: Iterable[str], action: str = ALLOW, **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": action}
    rule.update(extra)
    return rule


def _arg(index: int, value: int, op: str, value_two: int | None = None) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value, "op": op}
    if value_two is not None:
        arg["valueTwo"] = value_two
    return arg


def runtime_default_profile(arch: str = "x86_64", *, caps: Iterable[str] = ()) -> dict[str, Any]:
    """The RuntimeDefault profile for ``arch``, given the container's bounding capabilities.

    ``caps`` decides the capability-guarded syscalls; pass the bounding set the spec grants
    (with no caps, the profile is the strictest one).
    """
    name = native_arch(arch)
    granted = set(caps)
    syscalls = [_rule(_BASE_SYSCALLS)]
    # socket(2) for every address family but AF_ALG and AF_VSOCK (one condition per rule:
    # several conditions on the same argument would be OR-ed by libseccomp).
    syscalls += [
        _rule(["socket"], args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]),
        _rule(["socket"], args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]),
        _rule(["socket"], args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]),
    ]
    syscalls += [_rule(["personality"], args=[_arg(0, p, "SCMP_CMP_EQ")]) for p in _PERSONAS]
    syscalls.append(_rule(_PTRACE_SYSCALLS))
    syscalls.append(_rule(_ARCH_SYSCALLS[name]))
    syscalls += [_rule(names) for cap, names in _CAP_SYSCALLS if cap in granted]
    if "CAP_SYS_ADMIN" not in granted:
        # clone without namespace flags; the flags are the first argument except on s390,
        # whose clone takes the stack pointer first.
        index = 1 if name == "s390x" else 0
        syscalls.append(
            _rule(["clone"], args=[_arg(index, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)])
        )
        # ENOSYS rather than EPERM, so that libcs fall back to clone(2), which is filtered.
        syscalls.append(_rule(["clone3"], ERRNO, errnoRet=ENOSYS))
    return {
        "defaultAction": ERRNO,
        "defaultErrnoRet": EPERM,
        "architectures": seccomp_architectures(name),
        "syscalls": syscalls,
    }


def localhost_profile(
    profile: Mapping[str, Any], arch: str = "x86_64", *, caps: Iterable[str] = ()
) -> dict[str, Any]:
    """A Localhost profile (already read from disk) as an OCI ``linux.seccomp`` object.

    The OCI form is taken as is. The Docker form is also understood, as profiles written for
    Docker are common: ``archMap`` (the entry for ``arch`` gives the architectures), ``name``
    for a single syscall, and per-rule ``includes``/``excludes`` on ``caps`` and ``arches``
    (``minKernel`` conditions are treated as met). Raises ValueError for a malformed profile.
    """
    if not isinstance(profile, Mapping) or not isinstance(profile.get("defaultAction"), str):
        raise ValueError("seccomp profile has no defaultAction")
    name = native_arch(arch)
    native = _ARCHES[name][0]
    granted = set(caps)
    out: dict[str, Any] = {}
    for key in ("defaultAction", "defaultErrnoRet", "flags", "listenerPath", "listenerMetadata"):
        if key in profile:
            out[key] = profile[key]
    if "architectures" in profile:
        out["architectures"] = list(profile["architectures"])
    elif "archMap" in profile:
        for entry in profile["archMap"] or ():
            if entry.get("architecture") == native:
                out["architectures"] = [native, *(entry.get("subArchitectures") or ())]
                break

    def matches(cond: Mapping[str, Any], *, include: bool) -> bool:
        rule_caps = cond.get("caps") or ()
        rule_arches = cond.get("arches") or ()
        arch_names = {name, native, *(k for k, v in _ARCH_ALIASES.items() if v == name)}
        if include:
            caps_ok = all(c in granted for c in rule_caps)
            return caps_ok and (not rule_arches or bool(arch_names & set(rule_arches)))
        return any(c in granted for c in rule_caps) or bool(arch_names & set(rule_arches))

    syscalls = []
    for rule in profile.get("syscalls") or ():
        if not isinstance(rule, Mapping):
            raise ValueError("seccomp profile: a syscalls entry is not an object")
        if not matches(rule.get("includes") or {}, include=True):
            continue
        if rule.get("excludes") and matches(rule["excludes"], include=False):
            continue
        names = list(rule.get("names") or ())
        if rule.get("name"):
            names.append(rule["name"])
        if not names or not isinstance(rule.get("action"), str):
            raise ValueError("seccomp profile: a syscalls entry needs names and an action")
        converted: dict[str, Any] = {"names": names, "action": rule["action"]}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                converted[key] = rule[key]
        syscalls.append(converted)
    if syscalls:
        out["syscalls"] = syscalls
    return out
