"""gVisor's limits and spec adjustments, pure: what is refused (naming the field), how PID
namespace modes, masked and read-only paths become what runsc honours."""

from __future__ import annotations

from typing import Any

import pytest

from cri_async.backends.infra import infra_spec
from cri_async.backends.runsclimits import check_container, check_sandbox, exec_applies_seccomp
from cri_async.backends.runscspec import adjust_container_spec, hidden_paths
from cri_async.core.errors import FailedPrecondition
from cri_async.core.model import (
    Capabilities,
    ContainerConfig,
    ContainerMetadata,
    ContainerSecurity,
    ImageSpec,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PodMetadata,
    Propagation,
    Sandbox,
    SandboxConfig,
    SandboxSecurity,
)

POD = PodMetadata("p", "u", "ns")


def ctr(**security: Any) -> ContainerConfig:
    return ContainerConfig(
        ContainerMetadata("c"), ImageSpec("busybox"), security=ContainerSecurity(**security)
    )


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            SandboxConfig(
                POD,
                security=SandboxSecurity(namespaces=NamespaceOptions(network=NamespaceMode.NODE)),
            ),
            "namespace_options.network NODE",
        ),
        (
            SandboxConfig(
                POD, security=SandboxSecurity(namespaces=NamespaceOptions(pid=NamespaceMode.NODE))
            ),
            "namespace_options.pid NODE",
        ),
        (
            SandboxConfig(
                POD, security=SandboxSecurity(namespaces=NamespaceOptions(ipc=NamespaceMode.NODE))
            ),
            "namespace_options.ipc NODE",
        ),
        (SandboxConfig(POD, sysctls={"kernel.shm_rmid_forced": "1"}), "linux.sysctls"),
    ],
)
def test_pods_gvisor_cannot_run_are_refused(config: SandboxConfig, needle: str) -> None:
    with pytest.raises(FailedPrecondition, match="gVisor") as err:
        check_sandbox(config)
    assert needle in str(err.value)


def test_a_privileged_pod_is_fine_a_privileged_container_is_not() -> None:
    check_sandbox(SandboxConfig(POD, security=SandboxSecurity(privileged=True)))
    with pytest.raises(FailedPrecondition, match=r"security_context\.privileged"):
        check_container(ctr(privileged=True), host_network_stack=True)


def test_capabilities_and_propagation() -> None:
    check_container(ctr(capabilities=Capabilities(add=("ALL",))), host_network_stack=True)
    check_container(ctr(capabilities=Capabilities(add=("NET_ADMIN",))), host_network_stack=False)
    with pytest.raises(FailedPrecondition, match="add_capabilities NET_ADMIN"):
        check_container(ctr(capabilities=Capabilities(add=("NET_ADMIN",))), host_network_stack=True)
    with pytest.raises(FailedPrecondition, match="does not know"):
        check_container(ctr(capabilities=Capabilities(add=("BPF",))), host_network_stack=True)
    shared = ContainerConfig(
        ContainerMetadata("c"),
        ImageSpec("busybox"),
        mounts=(Mount("/m", "/tmp", propagation=Propagation.BIDIRECTIONAL),),
    )
    with pytest.raises(FailedPrecondition, match="propagation BIDIRECTIONAL"):
        check_container(shared, host_network_stack=True)
    slave = ContainerConfig(
        ContainerMetadata("c"),
        ImageSpec("busybox"),
        mounts=(Mount("/m", "/tmp", propagation=Propagation.HOST_TO_CONTAINER),),
    )
    check_container(slave, host_network_stack=True)


def test_exec_seccomp_by_version() -> None:
    assert not exec_applies_seccomp("0.0~20221219.0")
    assert exec_applies_seccomp("release-20260308.0")
    assert exec_applies_seccomp("release-20270101.0")
    assert not exec_applies_seccomp("")


def _spec() -> dict[str, Any]:
    return {
        "root": {"path": "/b/rootfs"},
        "process": {
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_BPF"], "effective": ["CAP_PERFMON"]},
            "oomScoreAdj": -998,
        },
        "mounts": [],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/bin/ls", "/etc/ssl", "/gone"],
            "readonlyPaths": ["/proc/sys", "/tmp"],
        },
    }


def adjust(spec: dict[str, Any], mode: NamespaceMode, target: str | None = None) -> list[str]:
    kinds = {"/bin/ls": "file", "/etc/ssl": "dir", "/tmp": "dir"}
    return adjust_container_spec(
        spec,
        "sb",
        pid_mode=mode,
        pidns_token="/b/pidns",
        target_token=target,
        kinds=kinds,
        mask_file="/b/masked",
    )


def test_pid_namespace_modes() -> None:
    for mode, expected in (
        (NamespaceMode.POD, None),
        (NamespaceMode.CONTAINER, {"type": "pid", "path": "/b/pidns"}),
        (NamespaceMode.TARGET, {"type": "pid", "path": "/t/pidns"}),
    ):
        spec = _spec()
        adjust(spec, mode, "/t/pidns")
        pid = [n for n in spec["linux"]["namespaces"] if n["type"] == "pid"]
        assert pid == ([expected] if expected else [])
        assert {"type": "mount"} in spec["linux"]["namespaces"]


def test_hidden_paths_become_mounts() -> None:
    spec = _spec()
    assert hidden_paths(spec) == ["/bin/ls", "/etc/ssl", "/gone", "/tmp"]
    notes = adjust(spec, NamespaceMode.CONTAINER)
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert set(mounts) == {"/bin/ls", "/etc/ssl", "/tmp"}  # /proc, /sys: gVisor's own
    assert mounts["/bin/ls"]["source"] == "/b/masked" and "ro" in mounts["/bin/ls"]["options"]
    assert mounts["/etc/ssl"]["type"] == "tmpfs" and "ro" in mounts["/etc/ssl"]["options"]
    assert mounts["/tmp"]["source"] == "/b/rootfs/tmp" and "ro" in mounts["/tmp"]["options"]
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert spec["process"] == {
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": []},
        "oomScoreAdj": 0,
    }
    assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == "sb"
    assert len(notes) == 5


def test_sysctls_never_reach_a_runsc_spec() -> None:
    spec = _spec()
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    with pytest.raises(ValueError, match="sysctls"):
        adjust(spec, NamespaceMode.POD)


def test_the_infra_container_holds_the_default_capabilities() -> None:
    """runsc gives the sandbox process on the host the infra container's capabilities; a
    pod's web server binds port 80 with CAP_NET_BIND_SERVICE."""
    sb = Sandbox("s" * 64, SandboxConfig(POD), "runsc", 0)
    spec = infra_spec(
        sb,
        rootfs="/r",
        args=["/catatonit", "-P"],
        netns=None,
        hostname="h",
        cgroups_path="/p/s",
        oom_score_adj=0,
        bounding_caps=frozenset({"CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_SYS_ADMIN"}),
    )
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]


def test_read_only_binds_are_recursive_in_gvisor() -> None:
    """A read-only mount with mounts below its host path would make those read-only too:
    refused unless recursive read-only is what was asked; "rro" becomes gVisor's "ro"."""
    ro = ContainerConfig(
        ContainerMetadata("c"), ImageSpec("busybox"), mounts=(Mount("/v", "/data", readonly=True),)
    )
    check_container(ro, host_network_stack=True, host_mounts=["/", "/data", "/database"])
    with pytest.raises(FailedPrecondition, match="recursive_read_only"):
        check_container(ro, host_network_stack=True, host_mounts=["/", "/data/sub"])
    rro = ContainerConfig(
        ContainerMetadata("c"),
        ImageSpec("busybox"),
        mounts=(Mount("/v", "/data", readonly=True, recursive_read_only=True),),
    )
    check_container(rro, host_network_stack=True, host_mounts=["/data/sub"])
    spec = _spec()
    spec["mounts"] = [{"destination": "/v", "type": "bind", "options": ["rbind", "rro"]}]
    adjust(spec, NamespaceMode.POD)
    assert spec["mounts"][0]["options"] == ["rbind", "ro"]
