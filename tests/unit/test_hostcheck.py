"""`cri-async check`: each prerequisite removed or broken in turn is named, with its fix.

The pure checks get hand-made facts; the gatherer reads a fake procfs and a config that
points at missing binaries and directories."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cri_async.config import (
    Config,
    HandlerConfig,
    NetworkSection,
    RegistryConfig,
    RuntimeSection,
    ServerConfig,
    StateConfig,
)
from cri_async.hostcheck import (
    CNIFacts,
    DirFacts,
    Facts,
    Finding,
    Handler,
    Program,
    RegistryFacts,
    Severity,
    SocketState,
    check,
    failed,
    report,
    root_propagation,
)
from cri_async.hostcheck_gather import gather
from cri_async.network.cniconf import DEFAULT_CONFLIST

V1 = ("cpu,cpuacct", "memory", "pids", "devices", "freezer", "hugetlb", "blkio", "cpuset")


def mountinfo(
    root_opts: str = "shared:1", v1: tuple[str, ...] = V1, *, unified: bool = True
) -> str:
    lines = [f"22 1 8:1 / / rw,relatime {root_opts} - ext4 /dev/vda rw"]
    for i, c in enumerate(v1):
        lines.append(
            f"{30 + i} 25 0:{30 + i} / /sys/fs/cgroup/{c} rw shared:{9 + i} - cgroup cgroup rw,{c}"
        )
    if unified:
        lines.append("40 25 0:40 / /sys/fs/cgroup/unified rw shared:20 - cgroup2 cgroup2 rw")
    return "\n".join(lines) + "\n"


PROC_CGROUPS = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + "".join(
    f"{c}\t{i + 1}\t1\t1\n"
    for i, c in enumerate(("cpu", "cpuacct", "memory", "pids", "devices", "hugetlb"))
)
FULL_CAPS = "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
NO_SYS_RESOURCE = "CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n"
DEFAULT_NET = json.loads(DEFAULT_CONFLIST)
PLUGINS = frozenset({"loopback", "bridge", "host-local", "portmap"})


def good() -> Facts:
    def prog(name: str) -> Program:
        return Program(name, f"/usr/bin/{name}", f"{name} version 1")

    return Facts(
        euid=0,
        handlers=(
            Handler("", "runc", prog("runc")),
            Handler("crun", "crun", prog("crun")),
            Handler("runsc", "runsc", prog("runsc")),
        ),
        conmon=prog("conmon"),
        cni=CNIFacts(
            ("/etc/cni/net.d",),
            {"/etc/cni/net.d/10-net.conflist": DEFAULT_CONFLIST},
            ("/usr/lib/cni",),
            PLUGINS,
        ),
        mountinfo=mountinfo(),
        proc_cgroups=PROC_CGROUPS,
        status=FULL_CAPS,
        oom_score_adj=0,
        filesystems="nodev\tproc\n\text4\nnodev\toverlay\n",
        registry=RegistryFacts(mirrors={"docker.io": ("https://mirror.example",)}),
        socket="/run/cri-async/cri-async.sock",
        socket_state=SocketState.ABSENT,
        socket_dir=DirFacts("/run/cri-async", True, True),
        state_dir=DirFacts("/var/lib/cri-async", False, True),
    )


def test_a_complete_host_has_nothing_to_fix() -> None:
    findings = check(good())
    assert [f for f in findings if f.severity is not Severity.OK] == []
    assert not failed(findings)
    text = report(findings)
    assert text.endswith("0 missing, 0 warnings\n")
    assert "docker.io -> https://mirror.example" in text


def _handler(i: int, **kw: object) -> Callable[[Facts], Facts]:
    def change(f: Facts) -> Facts:
        hs = list(f.handlers)
        hs[i] = dataclasses.replace(hs[i], **kw)  # type: ignore[arg-type]
        return dataclasses.replace(f, handlers=tuple(hs))

    return change


def _cni(**kw: object) -> Callable[[Facts], Facts]:
    def change(f: Facts) -> Facts:
        assert f.cni is not None
        return dataclasses.replace(f, cni=dataclasses.replace(f.cni, **kw))  # type: ignore[arg-type]

    return change


def _registry(**kw: object) -> Callable[[Facts], Facts]:
    def change(f: Facts) -> Facts:
        assert f.registry is not None
        return dataclasses.replace(f, registry=dataclasses.replace(f.registry, **kw))  # type: ignore[arg-type]

    return change


def _facts(**kw: object) -> Callable[[Facts], Facts]:
    return lambda f: dataclasses.replace(f, **kw)  # type: ignore[arg-type]


Breakage = (
    tuple[str, Callable[[Facts], Facts], str, Severity, str]
    | tuple[str, Callable[[Facts], Facts], str, Severity, str, tuple[str, ...]]
)
BREAKAGES: list[Breakage] = [
    # id, change, item, severity, text of the fix[, other items it also affects]
    ("not-root", _facts(euid=1000), "root", Severity.MISSING, "as root"),
    (
        "runc-missing",
        _handler(0, program=Program("runc", None)),
        'handler "" (runc)',
        Severity.MISSING,
        "apt-get install runc",
    ),
    (
        "crun-missing",
        _handler(1, program=Program("/opt/crun", None)),
        'handler "crun" (crun)',
        Severity.MISSING,
        "apt-get install crun",
    ),
    (
        "runsc-broken",
        _handler(2, program=Program("runsc", "/usr/bin/runsc", error="--version exited 1")),
        'handler "runsc" (runsc)',
        Severity.WARN,
        "apt-get install runsc",
    ),
    (
        "conmon-missing",
        _facts(conmon=Program("conmon", None)),
        "conmon",
        Severity.MISSING,
        "apt-get install conmon",
    ),
    ("no-cni-config", _cni(files={}), "CNI config", Severity.WARN, "--cni-default"),
    (
        "bad-cni-config",
        _cni(files={"/etc/cni/net.d/1.conflist": "{not json"}),
        "CNI config",
        Severity.MISSING,
        "fix or remove",
    ),
    (
        "cni-plugin-missing",
        _cni(plugins=PLUGINS - {"portmap"}),
        "CNI plugins",
        Severity.MISSING,
        "containernetworking-plugins",
    ),
    (
        "ipam-plugin-missing",
        _cni(plugins=PLUGINS - {"host-local"}),
        "CNI plugins",
        Severity.MISSING,
        "containernetworking-plugins",
    ),
    (
        "loopback-missing",
        _cni(plugins=PLUGINS - {"loopback"}),
        "CNI plugins",
        Severity.MISSING,
        "containernetworking-plugins",
    ),
    (
        "no-cgroups",
        _facts(mountinfo=mountinfo(v1=(), unified=False)),
        "cgroups",
        Severity.MISSING,
        "mount",
    ),
    (
        "no-memory-cgroup",
        _facts(mountinfo=mountinfo(v1=tuple(c for c in V1 if c != "pids"))),
        "cgroups",
        Severity.MISSING,
        "mount -t cgroup -o pids",
    ),
    (
        "hugetlb-unmounted",
        _facts(mountinfo=mountinfo(v1=tuple(c for c in V1 if c != "hugetlb"))),
        "cgroup hugetlb",
        Severity.WARN,
        "mount -t cgroup -o hugetlb",
    ),
    (
        "root-private",
        _facts(mountinfo=mountinfo(root_opts="")),
        "mount propagation of /",
        Severity.WARN,
        "mount --make-rshared /",
    ),
    (
        "caps-missing",
        _facts(status="CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n"),
        "capabilities",
        Severity.MISSING,
        "capability set",
        ("oom_score_adj",),
    ),
    (
        "no-sys-resource",
        _facts(status=NO_SYS_RESOURCE),
        "capabilities",
        Severity.WARN,
        "bounding set is complete",
        ("oom_score_adj",),
    ),
    ("no-overlay", _facts(filesystems="nodev\tproc\n"), "overlayfs", Severity.MISSING, "modprobe"),
    (
        "hosts-dir-missing",
        _registry(config_path="/etc/cri-async/certs.d"),
        "registry hosts dir",
        Severity.WARN,
        "mkdir -p /etc/cri-async/certs.d",
    ),
    (
        "hosts-toml-broken",
        _registry(hosts_errors=("/x/docker.io/hosts.toml: bad",)),
        "registry hosts.toml",
        Severity.MISSING,
        "fix the file",
    ),
    (
        "credentials-broken",
        _registry(credentials_file="/c.json", credentials_error="invalid JSON"),
        "registry credentials",
        Severity.MISSING,
        "credentials_file",
    ),
    ("ca-missing", _registry(missing_ca=("/ca.pem",)), "registry CA", Severity.MISSING, "ca"),
    (
        "socket-dir-readonly",
        _facts(socket_dir=DirFacts("/run/cri-async", False, False)),
        "socket directory",
        Severity.MISSING,
        "mkdir -p /run/cri-async",
    ),
    (
        "socket-is-a-file",
        _facts(socket_state=SocketState.NOT_A_SOCKET),
        "socket",
        Severity.MISSING,
        "rm /run/cri-async/cri-async.sock",
    ),
    (
        "state-dir-readonly",
        _facts(state_dir=DirFacts("/var/lib/cri-async", False, False)),
        "state directory",
        Severity.MISSING,
        "mkdir",
    ),
]


@pytest.mark.parametrize(
    ("change", "item", "severity", "fix", "also"),
    [pytest.param(*b[1:5], b[5] if len(b) > 5 else (), id=b[0]) for b in BREAKAGES],
)
def test_each_broken_prerequisite_is_named_with_its_fix(
    change: Callable[[Facts], Facts],
    item: str,
    severity: Severity,
    fix: str,
    also: tuple[str, ...],
) -> None:
    findings = check(change(good()))
    bad = [f for f in findings if f.severity is not Severity.OK]
    assert sorted(f.item for f in bad) == sorted((item, *also))
    bad = [f for f in bad if f.item == item]
    assert [f.severity for f in bad] == [severity]
    assert fix in bad[0].fix
    assert failed(findings) is (severity is Severity.MISSING)
    assert f"{item}: {bad[0].detail}" in report(findings)
    assert f"fix: {bad[0].fix}" in report(findings)


def test_fake_handlers_need_no_runtime_host() -> None:
    f = dataclasses.replace(
        good(),
        euid=1000,
        handlers=(Handler("", "fake", None),),
        conmon=None,
        cni=None,
        mountinfo="",
        status="",
        filesystems="",
    )
    assert not failed(check(f))


def test_root_propagation() -> None:
    assert root_propagation(mountinfo()) == "shared"
    assert root_propagation(mountinfo(root_opts="master:3")) == "slave"
    assert root_propagation(mountinfo(root_opts="")) == "private"
    assert root_propagation("") is None


def fake_proc(root: Path, *, status: str, filesystems: str) -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/status").write_text(status)
    (proc / "self/mountinfo").write_text(mountinfo())
    (proc / "self/oom_score_adj").write_text("0\n")
    (proc / "cgroups").write_text(PROC_CGROUPS)
    (proc / "filesystems").write_text(filesystems)
    return proc


def test_gather_names_what_the_config_points_at_but_is_not_there(tmp_path: Path) -> None:
    cni_conf = tmp_path / "net.d"
    cni_conf.mkdir()
    (cni_conf / "10-net.conflist").write_text(DEFAULT_CONFLIST)
    bins = tmp_path / "cni-bin"
    bins.mkdir()
    for plugin in ("loopback", "bridge", "host-local"):  # portmap is missing
        (bins / plugin).write_text("#!/bin/sh\n")
        (bins / plugin).chmod(0o755)
    (tmp_path / "sock").write_text("a regular file where the socket goes")
    cfg = dataclasses.replace(
        Config(),
        server=ServerConfig(socket=str(tmp_path / "sock")),
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(tmp_path / "run")),
        runtime=RuntimeSection(conmon=str(tmp_path / "no-conmon")),
        runtimes={
            "": HandlerConfig("runc", binary=str(tmp_path / "no-runc")),
            "sim": HandlerConfig("fake"),
        },
        network=NetworkSection(conf_dirs=[str(cni_conf)], bin_dirs=[str(bins)]),
        registry=RegistryConfig(
            config_path=str(tmp_path / "certs.d"),
            credentials_file=str(tmp_path / "auth.json"),
            ca={"r.example": [str(tmp_path / "ca.pem")]},
        ),
    )
    (tmp_path / "auth.json").write_text("{not json")
    proc = fake_proc(tmp_path, status=NO_SYS_RESOURCE, filesystems="nodev\tproc\n")
    findings = check(gather(cfg, proc=proc))
    by_item: dict[str, Finding] = {f.item: f for f in findings}
    assert by_item['handler "" (runc)'].severity is Severity.MISSING
    assert f"{tmp_path}/no-runc not found" in by_item['handler "" (runc)'].detail
    assert by_item['handler "sim" (fake)'].severity is Severity.OK
    assert by_item["conmon"].severity is Severity.MISSING
    assert by_item["CNI plugins"].detail.startswith("portmap not found")
    assert by_item["overlayfs"].severity is Severity.MISSING
    assert by_item["oom_score_adj"].severity is Severity.WARN
    assert by_item["registry hosts dir"].severity is Severity.WARN
    assert by_item["registry credentials"].severity is Severity.MISSING
    assert by_item["registry CA"].detail == f"{tmp_path}/ca.pem does not exist"
    assert by_item["socket"].severity is Severity.MISSING
    assert by_item["state directory"] == Finding(
        "state directory", Severity.OK, f"{tmp_path}/state (created at start)"
    )
    assert failed(findings)
