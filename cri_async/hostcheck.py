"""``cri-async check``: what this host lacks for the configured runtime, and how to fix it.

Pure: ``check(facts)`` turns the ``Facts`` that ``hostcheck_gather`` reads from the host
into ``Finding``s; each names what was checked, what was found and, when something is
wrong, the command that fixes it. ``MISSING`` means cri-async (or a configured handler)
cannot work; ``WARN`` means it works with a limit, or fixes the point itself at startup.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cri_async.network.cniconf import pick_config
from cri_async.oci.defaults import capabilities_from_mask
from cri_async.stats.cgrouplayout import detect_layout, parse_mountinfo


class Severity(enum.Enum):
    OK = "ok"
    WARN = "warn"
    MISSING = "MISSING"


@dataclass(frozen=True, slots=True)
class Finding:
    item: str
    severity: Severity
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Program:
    name: str  # as configured ("runc", "/opt/bin/crun")
    path: str | None  # where it was found; None: not found
    version: str = ""  # first line of ``--version``
    error: str = ""  # running ``--version`` failed


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    backend: str
    program: Program | None  # None for the fake backend


@dataclass(frozen=True, slots=True)
class CNIFacts:
    conf_dirs: tuple[str, ...]
    files: Mapping[str, str]  # config path -> text
    bin_dirs: tuple[str, ...]
    plugins: frozenset[str]  # executables in bin_dirs


@dataclass(frozen=True, slots=True)
class RegistryFacts:
    config_path: str = ""
    config_path_exists: bool = False
    hosts: tuple[str, ...] = ()  # hosts with a hosts.toml under config_path
    hosts_errors: tuple[str, ...] = ()
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    credentials_file: str = ""
    credentials_error: str = ""
    missing_ca: tuple[str, ...] = ()


class SocketState(enum.Enum):
    ABSENT = "absent"
    LIVE = "live"  # a server answers on it
    STALE = "stale"  # a socket file nobody listens on (replaced at start)
    NOT_A_SOCKET = "not-a-socket"


@dataclass(frozen=True, slots=True)
class DirFacts:
    path: str
    exists: bool
    writable: bool  # the directory, or the nearest existing parent that would hold it


@dataclass(frozen=True, slots=True)
class Facts:
    euid: int
    handlers: tuple[Handler, ...]
    conmon: Program | None  # None: no handler needs it
    cni: CNIFacts | None  # None: no real pods (fake handlers only)
    mountinfo: str  # /proc/self/mountinfo
    proc_cgroups: str  # /proc/cgroups
    status: str  # /proc/self/status
    oom_score_adj: int
    filesystems: str  # /proc/filesystems
    registry: RegistryFacts | None  # None: images.backend = "fake"
    socket: str
    socket_state: SocketState
    socket_dir: DirFacts
    state_dir: DirFacts


# What a runtime needs in its effective set: mounts and namespaces, CNI's netlink and
# iptables, ownership and device nodes for the rootfs, signals to containers.
REQUIRED_CAPS = (
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_KILL",
)
# The v1 controllers the stats and resource code use; v2 has them in one hierarchy.
REQUIRED_V1 = ("cpu", "cpuacct", "memory", "pids", "devices")
# kubelet's oom_score_adj for Guaranteed pods (critical pods get -998).
KUBELET_GUARANTEED_OOM = -997

INSTALL_HINT = {
    "runc": "apt-get install runc",
    "crun": "apt-get install crun",
    "runsc": "apt-get install runsc",
    "youki": "install youki from its releases (Debian 12 has no package), "
    "or remove the handler from the config",
    "conmon": "apt-get install conmon",
    "shimv2": "put the shim named by runtime_type on PATH (containerd-shim-runc-v2: "
    "apt-get install containerd)",
}
CNI_PLUGINS_HINT = "apt-get install containernetworking-plugins  # into /usr/lib/cni"
CNI_DEFAULT_HINT = "cri-async config --cni-default > /etc/cni/net.d/10-cri-async.conflist"


def _program(item: str, p: Program, hint: str) -> Finding:
    if p.path is None:
        return Finding(item, Severity.MISSING, f"{p.name} not found", hint)
    if p.error:
        return Finding(item, Severity.WARN, f"{p.path}: {p.error}", hint)
    return Finding(item, Severity.OK, f"{p.path}: {p.version or 'version unknown'}")


def check_programs(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    real = [h for h in f.handlers if h.program is not None]
    if real and f.euid != 0:
        out.append(
            Finding("root", Severity.MISSING, f"running as uid {f.euid}", "run cri-async as root")
        )
    for h in f.handlers:
        item = f'handler "{h.name}" ({h.backend})'
        if h.program is None:
            out.append(Finding(item, Severity.OK, "simulated containers (fake backend)"))
        else:
            out.append(_program(item, h.program, INSTALL_HINT.get(h.backend, "")))
    if f.conmon is not None:
        out.append(_program("conmon", f.conmon, INSTALL_HINT["conmon"]))
    return out


def check_cni(c: CNIFacts) -> list[Finding]:
    errors: list[str] = []
    net = pick_config(c.files, errors)
    dirs = ", ".join(c.conf_dirs)
    if net is None:
        if errors:
            return [
                Finding(
                    "CNI config", Severity.MISSING, "; ".join(errors), f"fix or remove it in {dirs}"
                )
            ]
        return [
            Finding(
                "CNI config",
                Severity.WARN,
                f"no network config in {dirs}: the node reports NetworkReady=false "
                "until a network add-on installs one",
                CNI_DEFAULT_HINT,
            )
        ]
    out = [Finding("CNI config", Severity.OK, f"{net.source}: network {net.name!r}")]
    wanted = ["loopback"]
    for p in net.plugins:  # a plugin runs its IPAM plugin from the same directories
        ipam = p.get("ipam")
        wanted += [
            p["type"],
            *([ipam["type"]] if isinstance(ipam, dict) and ipam.get("type") else []),
        ]
    missing = sorted({t for t in wanted if t not in c.plugins})
    if missing:
        out.append(
            Finding(
                "CNI plugins",
                Severity.MISSING,
                f"{', '.join(missing)} not found in {':'.join(c.bin_dirs)}",
                CNI_PLUGINS_HINT,
            )
        )
    else:
        out.append(Finding("CNI plugins", Severity.OK, ", ".join(dict.fromkeys(wanted))))
    return out


def enabled_controllers(proc_cgroups: str) -> set[str]:
    """Controllers ``/proc/cgroups`` marks enabled."""
    out: set[str] = set()
    for line in proc_cgroups.splitlines():
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("#") and parts[3] == "1":
            out.add(parts[0])
    return out


def _mount_v1(c: str) -> str:
    return f"mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}"


def check_cgroups(f: Facts) -> list[Finding]:
    try:
        layout = detect_layout(parse_mountinfo(f.mountinfo))
    except ValueError as e:
        return [Finding("cgroups", Severity.MISSING, str(e), "mount the cgroup filesystems")]
    if layout.mode == "v2":
        return [Finding("cgroups", Severity.OK, f"cgroup v2 at {layout.unified}")]
    out: list[Finding] = []
    missing = [c for c in REQUIRED_V1 if c not in layout.v1]
    if missing:
        out.append(
            Finding(
                "cgroups",
                Severity.MISSING,
                f"{layout.mode}: no v1 hierarchy for {', '.join(missing)}",
                " && ".join(_mount_v1(c) for c in missing),
            )
        )
    else:
        out.append(Finding("cgroups", Severity.OK, f"{layout.mode} (cgroupfs driver)"))
    crun = any(h.backend == "crun" for h in f.handlers)
    hugetlb_enabled = "hugetlb" in enabled_controllers(f.proc_cgroups)
    if crun and hugetlb_enabled and "hugetlb" not in layout.v1:
        out.append(
            Finding(
                "cgroup hugetlb",
                Severity.WARN,
                "the kernel enables hugetlb but no v1 hierarchy mounts it; crun refuses every "
                "container then (cri-async mounts it when it starts)",
                _mount_v1("hugetlb"),
            )
        )
    elif crun:
        out.append(Finding("cgroup hugetlb", Severity.OK, "as crun needs it"))
    return out


def root_propagation(mountinfo: str) -> str | None:
    """ "shared", "slave" or "private" for the mount at /, None when there is none."""
    found = None
    for line in mountinfo.splitlines():
        pre = line.partition(" - ")[0].split()
        if len(pre) >= 6 and pre[4] == "/":
            optional = pre[6:]  # the last mount on / is the visible one
            found = (
                "shared"
                if any(o.startswith("shared:") for o in optional)
                else "slave"
                if any(o.startswith("master:") for o in optional)
                else "private"
            )
    return found


def check_propagation(f: Facts) -> list[Finding]:
    prop = root_propagation(f.mountinfo)
    if prop == "shared":
        return [Finding("mount propagation of /", Severity.OK, "shared")]
    return [
        Finding(
            "mount propagation of /",
            Severity.WARN,
            f"{prop or 'no mount at /'}: Bidirectional and HostToContainer mounts need / "
            "shared (cri-async makes it rshared when it starts)",
            "mount --make-rshared /",
        )
    ]


def _mask(status: str, key: str) -> frozenset[str]:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return capabilities_from_mask(line.split()[1])
    return frozenset()


def check_capabilities(f: Facts) -> list[Finding]:
    eff, bnd = _mask(f.status, "CapEff"), _mask(f.status, "CapBnd")
    out: list[Finding] = []
    missing = [c for c in REQUIRED_CAPS if c not in eff]
    if missing:
        out.append(
            Finding(
                "capabilities",
                Severity.MISSING,
                f"not in the effective set: {', '.join(missing)}",
                "run cri-async as root with the full capability set",
            )
        )
    elif "CAP_SYS_RESOURCE" not in bnd:
        out.append(
            Finding(
                "capabilities",
                Severity.WARN,
                "CAP_SYS_RESOURCE is not in the bounding set: privileged containers and "
                "containers asking for it get the capabilities this host allows",
                "run cri-async where the bounding set is complete (this host drops it)",
            )
        )
    else:
        out.append(Finding("capabilities", Severity.OK, "complete"))
    if "CAP_SYS_RESOURCE" in eff:
        out.append(Finding("oom_score_adj", Severity.OK, "containers may get -1000 to 1000"))
    else:
        floor = max(f.oom_score_adj, -1000)
        out.append(
            Finding(
                "oom_score_adj",
                Severity.WARN,
                f"without CAP_SYS_RESOURCE nothing goes below our own {f.oom_score_adj}: "
                f"kubelet's {KUBELET_GUARANTEED_OOM} for Guaranteed pods becomes "
                f"{max(floor, KUBELET_GUARANTEED_OOM)}",
                "give cri-async CAP_SYS_RESOURCE",
            )
        )
    return out


def check_overlay(f: Facts) -> list[Finding]:
    if any(line.split()[-1:] == ["overlay"] for line in f.filesystems.splitlines()):
        return [Finding("overlayfs", Severity.OK, "available")]
    return [Finding("overlayfs", Severity.MISSING, "not in /proc/filesystems", "modprobe overlay")]


def check_registry(r: RegistryFacts) -> list[Finding]:
    out: list[Finding] = []
    if r.config_path and not r.config_path_exists:
        out.append(
            Finding(
                "registry hosts dir",
                Severity.WARN,
                f"registry.config_path {r.config_path} does not exist: no hosts.toml is used",
                f"mkdir -p {r.config_path}/docker.io  # then write hosts.toml there",
            )
        )
    elif r.config_path:
        hosts = ", ".join(r.hosts) or "none"
        out.append(Finding("registry hosts dir", Severity.OK, f"{r.config_path}: {hosts}"))
    for err in r.hosts_errors:
        out.append(Finding("registry hosts.toml", Severity.MISSING, err, "fix the file"))
    mirrors = "; ".join(f"{h} -> {', '.join(u)}" for h, u in sorted(r.mirrors.items()))
    out.append(
        Finding(
            "registry mirrors",
            Severity.OK,
            mirrors or "none configured: pulls go to each registry directly",
        )
    )
    if r.credentials_error:
        out.append(
            Finding(
                "registry credentials",
                Severity.MISSING,
                f"{r.credentials_file}: {r.credentials_error}",
                "fix the file or unset registry.credentials_file",
            )
        )
    for ca in r.missing_ca:
        out.append(
            Finding("registry CA", Severity.MISSING, f"{ca} does not exist", "fix registry.ca")
        )
    return out


def _dir(item: str, d: DirFacts) -> Finding:
    if not d.writable:
        return Finding(item, Severity.MISSING, f"{d.path} is not writable", f"mkdir -p {d.path}")
    return Finding(item, Severity.OK, d.path if d.exists else f"{d.path} (created at start)")


def check_dirs(f: Facts) -> list[Finding]:
    out = [_dir("socket directory", f.socket_dir), _dir("state directory", f.state_dir)]
    if f.socket_state is SocketState.NOT_A_SOCKET:
        out.append(
            Finding(
                "socket",
                Severity.MISSING,
                f"{f.socket} exists and is not a socket (the server refuses to replace it)",
                f"rm {f.socket}",
            )
        )
    elif f.socket_state is SocketState.LIVE:
        out.append(Finding("socket", Severity.OK, f"{f.socket}: a server answers on it"))
    return out


def check(f: Facts) -> list[Finding]:
    out = check_programs(f)
    if f.cni is not None:
        out += check_cni(f.cni)
    if any(h.program is not None for h in f.handlers):
        out += check_cgroups(f)
        out += check_propagation(f)
        out += check_capabilities(f)
        out += check_overlay(f)
    if f.registry is not None:
        out += check_registry(f.registry)
    return out + check_dirs(f)


def failed(findings: Iterable[Finding]) -> bool:
    return any(x.severity is Severity.MISSING for x in findings)


def report(findings: list[Finding]) -> str:
    lines = []
    for x in findings:
        lines.append(f"{x.severity.value:<8}{x.item}: {x.detail}")
        if x.fix and x.severity is not Severity.OK:
            lines.append(f"{'':<8}fix: {x.fix}")
    missing = sum(x.severity is Severity.MISSING for x in findings)
    warn = sum(x.severity is Severity.WARN for x in findings)
    lines.append(f"{missing} missing, {warn} warnings")
    return "\n".join(lines) + "\n"
