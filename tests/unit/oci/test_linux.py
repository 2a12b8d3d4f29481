"""The spec's linux section and the rest: namespaces, sysctls, devices, resources, LSMs."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from cri_async.core.model import (
    Capabilities,
    Device,
    HugepageLimit,
    IDMapping,
    ImageSpec,
    NamespaceMode,
    ProfileType,
    Resources,
    SecurityProfile,
    SELinuxOptions,
    UserNamespace,
)
from cri_async.oci import DeviceNode, SpecError
from cri_async.oci.defaults import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
from cri_async.oci.errors import SpecUnsupported
from cri_async.oci.namespaces import normalize_sysctl
from cri_async.oci.seccomp import runtime_default_profile
from cri_async.oci.spec import OCI_VERSION

from .builders import (
    ALL_CAPS,
    HOST,
    HOST_NET_POD,
    POD,
    build,
    container,
    namespace_map,
    ns,
    sandbox,
)

PRIV_SB = sandbox(privileged=True)

# --- structure ------------------------------------------------------------------------------


def test_minimal_structure_and_json_round_trip() -> None:
    spec = build()
    text = json.dumps(spec, sort_keys=True)
    back = json.loads(text)
    assert back == spec
    assert back["ociVersion"] == OCI_VERSION
    assert isinstance(back["process"]["args"], list) and back["process"]["args"]
    assert back["root"]["path"] == "/run/cri-async/c1/rootfs"
    assert isinstance(back["linux"]["namespaces"], list)
    assert back["linux"]["cgroupsPath"] == "kubepods-besteffort-pod1.slice:cri-async:c1"


def test_spec_is_fresh_each_time() -> None:
    a, b = build(), build()
    a["mounts"][0]["options"].append("x")
    a["linux"]["resources"]["devices"][0]["allow"] = True
    assert b == build()


# --- namespaces -----------------------------------------------------------------------------


def test_default_namespaces() -> None:
    assert namespace_map(build()) == {
        "pid": None,  # PID mode CONTAINER: a new one
        "network": POD.netns,
        "ipc": POD.ipcns,
        "uts": POD.utsns,
        "mount": None,
    }


def test_pid_mode_pod_joins_the_pods_pid_namespace() -> None:
    ctr = container(security={"namespaces": ns(pid=NamespaceMode.POD)})
    spec = build(ctr, pod=replace(POD, pidns="/run/cri-async/pidns/p1"))
    assert namespace_map(spec)["pid"] == "/run/cri-async/pidns/p1"


def test_pid_mode_pod_without_a_pinned_namespace_gets_a_new_one() -> None:
    ctr = container(security={"namespaces": ns(pid=NamespaceMode.POD)})
    assert namespace_map(build(ctr))["pid"] is None
    assert "pid" in namespace_map(build(ctr))


def test_pid_mode_node_uses_the_host() -> None:
    ctr = container(security={"namespaces": ns(pid=NamespaceMode.NODE)})
    assert "pid" not in namespace_map(build(ctr))


def test_pid_mode_target() -> None:
    ctr = container(security={"namespaces": ns(pid=NamespaceMode.TARGET, target_id="c0")})
    assert namespace_map(build(ctr, target_pidns="/proc/42/ns/pid"))["pid"] == "/proc/42/ns/pid"
    with pytest.raises(SpecError, match="'c0'"):
        build(ctr)


def test_host_network_pod() -> None:
    nss = namespace_map(build(pod=HOST_NET_POD))
    assert "network" not in nss and "uts" not in nss
    assert nss["ipc"] == POD.ipcns


def test_host_ipc() -> None:
    assert "ipc" not in namespace_map(build(pod=replace(POD, ipcns=None)))


def test_ipc_mode_container_gets_a_private_namespace() -> None:
    ctr = container(security={"namespaces": ns(ipc=NamespaceMode.CONTAINER)})
    assert namespace_map(build(ctr))["ipc"] is None


@pytest.mark.parametrize(
    ("v2", "privileged", "has_cgroupns"),
    [(True, False, True), (True, True, False), (False, False, False)],
)
def test_cgroup_namespace(v2: bool, privileged: bool, has_cgroupns: bool) -> None:
    spec = build(
        container(security={"privileged": privileged}),
        sb=PRIV_SB,
        host=replace(HOST, cgroup_v2=v2),
    )
    assert ("cgroup" in namespace_map(spec)) is has_cgroupns


USERNS = UserNamespace(
    mode=NamespaceMode.POD,
    uids=(IDMapping(host_id=200000, container_id=0, length=65536),),
    gids=(IDMapping(host_id=300000, container_id=0, length=65536),),
)


def test_user_namespace_from_the_sandbox() -> None:
    sb = sandbox(namespaces=ns(userns=USERNS))
    spec = build(sb=sb)
    assert "user" in namespace_map(spec) and namespace_map(spec)["user"] is None
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 200000, "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 300000, "size": 65536}]


def test_user_namespace_joins_the_pinned_one() -> None:
    ctr = container(security={"namespaces": ns(userns=USERNS)})
    spec = build(ctr, pod=replace(POD, userns="/run/cri-async/userns/p1"))
    assert namespace_map(spec)["user"] == "/run/cri-async/userns/p1"


def test_user_namespace_node_mode_means_none() -> None:
    sb = sandbox(namespaces=ns(userns=UserNamespace(mode=NamespaceMode.NODE)))
    spec = build(sb=sb)
    assert "user" not in namespace_map(spec) and "uidMappings" not in spec["linux"]


def test_user_namespace_needs_mappings() -> None:
    sb = sandbox(namespaces=ns(userns=UserNamespace(mode=NamespaceMode.POD)))
    with pytest.raises(SpecError, match="mappings"):
        build(sb=sb)


def test_user_namespace_must_match_the_pods() -> None:
    other = replace(USERNS, uids=(IDMapping(1, 0, 10),))
    with pytest.raises(SpecError, match="differ"):
        build(
            container(security={"namespaces": ns(userns=other)}),
            sb=sandbox(namespaces=ns(userns=USERNS)),
        )


def test_hostname_only_with_a_pod_uts_namespace() -> None:
    assert build()["hostname"] == "web-0"
    assert "hostname" not in build(pod=HOST_NET_POD)
    assert "HOSTNAME=node-1" in build(pod=HOST_NET_POD)["process"]["env"]


# --- sysctls --------------------------------------------------------------------------------


def test_namespaced_sysctls_pass() -> None:
    sysctls = {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net/ipv4/conf/eth0.100/forwarding": "1",
        "kernel.shm_rmid_forced": "1",
        "kernel.msgmax": "65536",
        "kernel.sem": "250 32000 100 128",
        "fs.mqueue.msg_max": "100",
    }
    out = build(sb=sandbox(sysctls=sysctls))["linux"]["sysctl"]
    assert out["net.ipv4.conf.eth0/100.forwarding"] == "1"
    assert out["kernel.sem"] == "250 32000 100 128"
    assert len(out) == 6


def test_no_sysctl_key_when_none_requested() -> None:
    assert "sysctl" not in build()["linux"]


def test_net_sysctl_on_host_network_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"'net\.core\.somaxconn'.*host network"):
        build(sb=sandbox(sysctls={"net.core.somaxconn": "1024"}), pod=HOST_NET_POD)


def test_ipc_sysctl_on_host_ipc_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"'kernel\.shmmax'.*IPC"):
        build(sb=sandbox(sysctls={"kernel.shmmax": "1"}), pod=replace(POD, ipcns=None))


def test_ipc_sysctl_with_a_private_container_ipc_namespace_is_fine() -> None:
    ctr = container(security={"namespaces": ns(ipc=NamespaceMode.CONTAINER)})
    spec = build(ctr, sb=sandbox(sysctls={"kernel.msgmnb": "1"}), pod=replace(POD, ipcns=None))
    assert spec["linux"]["sysctl"] == {"kernel.msgmnb": "1"}


@pytest.mark.parametrize("name", ["vm.swappiness", "kernel.panic", "fs.file-max", "kernel.pid_max"])
def test_non_namespaced_sysctls_are_rejected(name: str) -> None:
    with pytest.raises(SpecError, match=re.escape(f"'{name}' is not namespaced")):
        build(sb=sandbox(sysctls={name: "1"}))


def test_normalize_sysctl() -> None:
    assert normalize_sysctl("net/ipv4/ip_forward") == "net.ipv4.ip_forward"
    assert (
        normalize_sysctl("net.ipv4.conf.eth0/100.forwarding") == "net.ipv4.conf.eth0/100.forwarding"
    )
    assert (
        normalize_sysctl("net/ipv4/conf/eth0.100/forwarding") == "net.ipv4.conf.eth0/100.forwarding"
    )


# --- devices --------------------------------------------------------------------------------

GPU = DeviceNode(path="/dev/nvidia0", type="c", major=195, minor=0, file_mode=0o666, gid=44)
DEFAULT_RULE_COUNT = 11


def test_default_device_rules() -> None:
    spec = build()
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = {(r.get("type"), r.get("major"), r.get("minor")) for r in rules if r["allow"]}
    for node in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]:
        assert ("c", *node) in allowed
    assert ("c", 136, None) in allowed  # /dev/pts/*
    assert len(rules) == DEFAULT_RULE_COUNT
    assert spec["linux"]["devices"] == []


def test_config_device() -> None:
    ctr = container(
        devices=(Device(container_path="/dev/gpu0", host_path="/dev/nvidia0", permissions="rw"),)
    )
    spec = build(ctr, devices={"/dev/nvidia0": [GPU]})
    assert spec["linux"]["devices"] == [
        {
            "path": "/dev/gpu0",
            "type": "c",
            "major": 195,
            "minor": 0,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 44,
        }
    ]
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": 195,
        "minor": 0,
        "access": "rw",
    }


def test_device_directory() -> None:
    nodes = [
        DeviceNode("/dev/snd/controlC0", "c", 116, 2),
        DeviceNode("/dev/snd/pcmC0D0p", "c", 116, 3),
    ]
    ctr = container(devices=(Device(container_path="/dev/snd", host_path="/dev/snd"),))
    spec = build(ctr, devices={"/dev/snd": nodes})
    assert [d["path"] for d in spec["linux"]["devices"]] == [
        "/dev/snd/controlC0",
        "/dev/snd/pcmC0D0p",
    ]
    assert len(spec["linux"]["resources"]["devices"]) == DEFAULT_RULE_COUNT + 2


def test_unresolved_device_is_an_error() -> None:
    ctr = container(devices=(Device(container_path="/dev/x", host_path="/dev/x"),))
    with pytest.raises(SpecError, match="'/dev/x' was not found"):
        build(ctr)


@pytest.mark.parametrize("perms", ["rwx", "a", "read"])
def test_bad_device_permissions(perms: str) -> None:
    ctr = container(
        devices=(Device(container_path="/dev/gpu0", host_path="/dev/nvidia0", permissions=perms),)
    )
    with pytest.raises(SpecError, match="permissions"):
        build(ctr, devices={"/dev/nvidia0": [GPU]})


def test_empty_device_permissions_mean_rwm() -> None:
    ctr = container(
        devices=(Device(container_path="/dev/gpu0", host_path="/dev/nvidia0", permissions=""),)
    )
    spec = build(ctr, devices={"/dev/nvidia0": [GPU]})
    assert spec["linux"]["resources"]["devices"][-1]["access"] == "rwm"


def test_privileged_gets_host_devices_and_all_access() -> None:
    ctr = container(security={"privileged": True})
    spec = build(ctr, sb=PRIV_SB, host_devices=[GPU, DeviceNode("/dev/sda", "b", 8, 0)])
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert [d["path"] for d in spec["linux"]["devices"]] == ["/dev/nvidia0", "/dev/sda"]


def test_host_devices_ignored_when_not_privileged() -> None:
    assert build(host_devices=[GPU])["linux"]["devices"] == []


# --- resources ------------------------------------------------------------------------------


def test_resources() -> None:
    res = Resources(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit_in_bytes=256 << 20,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        hugepage_limits=(HugepageLimit("2MB", 4 << 20),),
        unified={"memory.high": "200000000"},
    )
    out = build(container(resources=res), host=replace(HOST, cgroup_v2=True))["linux"]["resources"]
    assert out["cpu"] == {
        "shares": 512,
        "quota": 50000,
        "period": 100000,
        "cpus": "0-1",
        "mems": "0",
    }
    assert out["memory"] == {"limit": 256 << 20, "swap": 256 << 20}
    assert out["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert out["unified"] == {"memory.high": "200000000"}
    assert "pids" not in out


def test_no_resources_means_only_device_rules() -> None:
    assert set(build()["linux"]["resources"]) == {"devices"}
    assert set(build(container(resources=Resources()))["linux"]["resources"]) == {"devices"}


def test_explicit_swap_limit() -> None:
    res = Resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)
    assert build(container(resources=res))["linux"]["resources"]["memory"] == {
        "limit": 100,
        "swap": 300,
    }


def test_no_swap_accounting_means_no_swap_limit() -> None:
    res = Resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)
    out = build(container(resources=res), host=replace(HOST, swap=False))["linux"]["resources"]
    assert out["memory"] == {"limit": 100}


def test_hugepages_dropped_without_hugetlb_controller() -> None:
    res = Resources(hugepage_limits=(HugepageLimit("2MB", 0),))
    out = build(container(resources=res), host=replace(HOST, hugetlb=False))["linux"]["resources"]
    assert "hugepageLimits" not in out


def test_unified_needs_cgroup_v2() -> None:
    with pytest.raises(SpecError, match="cgroup v2"):
        build(container(resources=Resources(unified={"memory.high": "1"})))


# --- capabilities in the spec ---------------------------------------------------------------


def test_spec_capabilities_are_bounded_by_the_host() -> None:
    host = replace(HOST, bounding_caps=ALL_CAPS - {"CAP_SYS_RESOURCE", "CAP_NET_RAW"})
    ctr = container(security={"capabilities": Capabilities(add=("SYS_RESOURCE",))})
    caps = build(ctr, host=host)["process"]["capabilities"]
    assert "CAP_SYS_RESOURCE" not in caps["bounding"]
    assert "CAP_NET_RAW" not in caps["effective"]  # a default the host lacks
    assert "CAP_CHOWN" in caps["permitted"]


def test_unknown_capability_in_spec() -> None:
    with pytest.raises(SpecError, match="unknown capability"):
        build(container(security={"capabilities": Capabilities(add=("WIZARD",))}))


# --- masked / readonly paths and privileged -------------------------------------------------


def test_default_masked_and_readonly_paths() -> None:
    linux = build()["linux"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]


def test_configured_masked_and_readonly_paths_replace_the_defaults() -> None:
    ctr = container(security={"masked_paths": ("/proc/x",), "readonly_paths": ("/proc/y",)})
    linux = build(ctr)["linux"]
    assert linux["maskedPaths"] == ["/proc/x"] and linux["readonlyPaths"] == ["/proc/y"]


def test_privileged_container() -> None:
    ctr = container(
        security={
            "privileged": True,
            "masked_paths": ("/proc/x",),
            "seccomp": SecurityProfile(ProfileType.RUNTIME_DEFAULT),
            "apparmor": SecurityProfile(ProfileType.RUNTIME_DEFAULT),
        }
    )
    host = replace(HOST, apparmor=True, apparmor_default_profile="cri-async-default")
    spec = build(ctr, sb=PRIV_SB, host=host)
    assert spec["linux"]["maskedPaths"] == [] and spec["linux"]["readonlyPaths"] == []
    assert set(spec["process"]["capabilities"]["bounding"]) == ALL_CAPS
    assert "seccomp" not in spec["linux"]
    assert "apparmorProfile" not in spec["process"]


# --- seccomp --------------------------------------------------------------------------------


def seccomp_of(profile: SecurityProfile | None, **kwargs: Any) -> Any:
    return build(container(security={"seccomp": profile}), **kwargs)["linux"].get("seccomp")


def test_runtime_default_seccomp_follows_the_granted_caps() -> None:
    profile = seccomp_of(SecurityProfile(ProfileType.RUNTIME_DEFAULT))
    caps = build()["process"]["capabilities"]["bounding"]
    assert profile == runtime_default_profile("x86_64", caps=caps)
    names = {n for r in profile["syscalls"] for n in r["names"] if not r.get("args")}
    assert "chroot" in names and "mount" not in names


def test_runtime_default_with_sys_admin_allows_mount() -> None:
    ctr = container(
        security={
            "seccomp": SecurityProfile(ProfileType.RUNTIME_DEFAULT),
            "capabilities": Capabilities(add=("SYS_ADMIN",)),
        }
    )
    profile = build(ctr)["linux"]["seccomp"]
    assert any("mount" in r["names"] for r in profile["syscalls"])


def test_runtime_default_uses_the_host_arch() -> None:
    profile = seccomp_of(
        SecurityProfile(ProfileType.RUNTIME_DEFAULT), host=replace(HOST, arch="aarch64")
    )
    assert profile["architectures"][0] == "SCMP_ARCH_AARCH64"


def test_unconfined_and_unset_seccomp() -> None:
    assert seccomp_of(SecurityProfile(ProfileType.UNCONFINED)) is None
    assert seccomp_of(None) is None
    # The runtime may be configured to confine containers that do not say.
    assert seccomp_of(None, seccomp_default=True)["defaultAction"] == "SCMP_ACT_ERRNO"


def test_localhost_seccomp() -> None:
    loaded = {"defaultAction": "SCMP_ACT_LOG"}
    sp = SecurityProfile(ProfileType.LOCALHOST, "profiles/audit.json")
    assert seccomp_of(sp, seccomp_localhost=loaded) == loaded
    with pytest.raises(SpecError, match=r"'profiles/audit\.json' was not loaded"):
        seccomp_of(sp)
    with pytest.raises(SpecError, match="defaultAction"):
        seccomp_of(sp, seccomp_localhost={"syscalls": []})


def test_localhost_ref_with_another_type_is_an_error() -> None:
    with pytest.raises(SpecError, match="localhost_ref"):
        seccomp_of(SecurityProfile(ProfileType.RUNTIME_DEFAULT, "x.json"))


# --- apparmor / selinux ---------------------------------------------------------------------

AA_HOST = replace(HOST, apparmor=True, apparmor_default_profile="cri-async-default")


@pytest.mark.parametrize(
    ("profile", "host", "expected"),
    [
        (None, AA_HOST, "cri-async-default"),
        (SecurityProfile(ProfileType.RUNTIME_DEFAULT), AA_HOST, "cri-async-default"),
        (SecurityProfile(ProfileType.UNCONFINED), AA_HOST, None),
        (SecurityProfile(ProfileType.LOCALHOST, "localhost/k8s-nginx"), AA_HOST, "k8s-nginx"),
        (SecurityProfile(ProfileType.LOCALHOST, "k8s-nginx"), AA_HOST, "k8s-nginx"),
        (
            SecurityProfile(ProfileType.RUNTIME_DEFAULT),
            replace(AA_HOST, apparmor_default_profile=""),
            None,
        ),
        (None, HOST, None),  # no AppArmor on the host: unset and Unconfined only
        (SecurityProfile(ProfileType.UNCONFINED), HOST, None),
    ],
)
def test_apparmor(profile: SecurityProfile | None, host: Any, expected: str | None) -> None:
    proc = build(container(security={"apparmor": profile}), host=host)["process"]
    assert proc.get("apparmorProfile") == expected


@pytest.mark.parametrize(
    "profile",
    [
        SecurityProfile(ProfileType.LOCALHOST, "k8s-nginx"),
        SecurityProfile(ProfileType.RUNTIME_DEFAULT),
    ],
)
def test_apparmor_profiles_are_refused_without_apparmor(profile: SecurityProfile) -> None:
    """As containerd: a profile the host cannot apply fails the create, never runs the
    container unconfined behind the caller's back."""
    with pytest.raises(SpecUnsupported, match="AppArmor is not enabled on this host"):
        build(container(security={"apparmor": profile}), host=HOST)


def test_apparmor_localhost_kept_for_privileged() -> None:
    ctr = container(
        security={"privileged": True, "apparmor": SecurityProfile(ProfileType.LOCALHOST, "p")}
    )
    assert build(ctr, sb=PRIV_SB, host=AA_HOST)["process"]["apparmorProfile"] == "p"


def test_selinux_labels_only_with_selinux() -> None:
    opts = SELinuxOptions(level="s0:c1,c2")
    ctr = container(security={"selinux": opts})
    assert "selinuxLabel" not in build(ctr)["process"]
    spec = build(ctr, host=replace(HOST, selinux=True))
    assert spec["process"]["selinuxLabel"] == "system_u:system_r:container_t:s0:c1,c2"
    assert spec["linux"]["mountLabel"] == "system_u:object_r:container_file_t:s0:c1,c2"
    assert "selinuxLabel" not in build(container(), host=replace(HOST, selinux=True))["process"]


def test_selinux_privileged_has_no_process_label() -> None:
    ctr = container(security={"privileged": True, "selinux": SELinuxOptions(type="spc_t")})
    spec = build(ctr, sb=PRIV_SB, host=replace(HOST, selinux=True))
    assert "selinuxLabel" not in spec["process"]


# --- annotations ----------------------------------------------------------------------------


def test_annotations() -> None:
    ctr = container(annotations={"team": "a", "io.kubernetes.cri.container-type": "spoofed"})
    ann = build(ctr)["annotations"]
    assert ann == {
        "team": "a",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "p1",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.image-name": "docker.io/library/busybox:1.36",
    }


def test_image_name_prefers_what_the_user_wrote() -> None:
    ctr = container(image=ImageSpec(image="sha256:" + "c" * 64, user_specified_image="busybox"))
    assert build(ctr)["annotations"]["io.kubernetes.cri.image-name"] == "busybox"
