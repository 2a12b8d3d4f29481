"""The RuntimeDefault seccomp profile and Localhost profile conversion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cri_async.oci.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    localhost_profile,
    runtime_default_profile,
)


def allowed_unconditionally(profile: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_shape_and_defaults() -> None:
    p = runtime_default_profile()
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert json.loads(json.dumps(p)) == p


def test_common_syscalls_are_allowed() -> None:
    allowed = allowed_unconditionally(runtime_default_profile())
    for name in ("read", "write", "openat", "execve", "futex", "exit_group"):
        assert name in allowed
    # 363 generic names, the ptrace trio, and two x86_64 specific ones.
    assert {"arch_prctl", "modify_ldt", "ptrace", "process_vm_readv"} <= allowed
    assert len(allowed) >= 360


@pytest.mark.parametrize(
    "name",
    [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "bpf",
        "reboot",
        "init_module",
        "kexec_load",
        "open_by_handle_at",
        "chroot",
        "acct",
        "settimeofday",
        "perf_event_open",
        "keyctl",
        "add_key",
        "iopl",
        "userfaultfd",
        "kcmp",
        "swapon",
    ],
)
def test_dangerous_syscalls_are_not_allowed_without_capabilities(name: str) -> None:
    assert name not in allowed_unconditionally(runtime_default_profile())


@pytest.mark.parametrize(
    ("cap", "syscall"),
    [
        ("CAP_SYS_ADMIN", "mount"),
        ("CAP_SYS_ADMIN", "unshare"),
        ("CAP_SYS_BOOT", "reboot"),
        ("CAP_SYS_CHROOT", "chroot"),
        ("CAP_SYS_MODULE", "finit_module"),
        ("CAP_SYS_PACCT", "acct"),
        ("CAP_SYS_PTRACE", "kcmp"),
        ("CAP_SYS_RAWIO", "iopl"),
        ("CAP_SYS_TIME", "settimeofday"),
        ("CAP_SYS_TTY_CONFIG", "vhangup"),
        ("CAP_SYS_NICE", "mbind"),
        ("CAP_SYSLOG", "syslog"),
        ("CAP_BPF", "bpf"),
        ("CAP_PERFMON", "perf_event_open"),
        ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ],
)
def test_capability_conditional_syscalls(cap: str, syscall: str) -> None:
    assert syscall not in allowed_unconditionally(runtime_default_profile())
    assert syscall in allowed_unconditionally(runtime_default_profile(caps=[cap]))


def test_default_capabilities_allow_chroot() -> None:
    assert "chroot" in allowed_unconditionally(runtime_default_profile(caps=["CAP_SYS_CHROOT"]))


def test_clone_is_filtered_without_sys_admin() -> None:
    p = runtime_default_profile()
    (clone,) = rules_for(p, "clone")
    assert clone["args"] == [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    (clone3,) = rules_for(p, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_clone_is_free_with_sys_admin() -> None:
    p = runtime_default_profile(caps=["CAP_SYS_ADMIN"])
    assert {"clone", "clone3"} <= allowed_unconditionally(p)
    assert all(not r.get("args") for r in rules_for(p, "clone"))
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(p, "clone3"))


def test_s390x_clone_flags_are_the_second_argument() -> None:
    (clone,) = rules_for(runtime_default_profile("s390x"), "clone")
    assert clone["args"][0]["index"] == 1


def test_socket_allows_all_families_but_alg_and_vsock() -> None:
    rules = rules_for(runtime_default_profile(), "socket")
    assert all(len(r["args"]) == 1 for r in rules)  # one condition per rule, never OR-ed

    def allowed(family: int) -> bool:
        for r in rules:
            a = r["args"][0]
            op, v = a["op"], a["value"]
            if (
                (op == "SCMP_CMP_LT" and family < v)
                or (op == "SCMP_CMP_EQ" and family == v)
                or (op == "SCMP_CMP_GT" and family > v)
            ):
                return True
        return False

    assert [f for f in range(64) if not allowed(f)] == [38, 40]  # AF_ALG, AF_VSOCK


def test_personality_only_harmless_personas() -> None:
    values = sorted(
        r["args"][0]["value"] for r in rules_for(runtime_default_profile(), "personality")
    )
    assert values == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


@pytest.mark.parametrize(
    ("arch", "first", "specific"),
    [
        ("amd64", "SCMP_ARCH_X86_64", "arch_prctl"),
        ("aarch64", "SCMP_ARCH_AARCH64", "set_tls"),
        ("arm64", "SCMP_ARCH_AARCH64", "cacheflush"),
        ("ppc64le", "SCMP_ARCH_PPC64LE", "swapcontext"),
        ("s390x", "SCMP_ARCH_S390X", "s390_runtime_instr"),
        ("riscv64", "SCMP_ARCH_RISCV64", "riscv_flush_icache"),
    ],
)
def test_architectures(arch: str, first: str, specific: str) -> None:
    p = runtime_default_profile(arch)
    assert p["architectures"][0] == first
    assert specific in allowed_unconditionally(p)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="sparc"):
        runtime_default_profile("sparc")


def test_no_duplicate_names_within_a_rule() -> None:
    p = runtime_default_profile(caps=["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"])
    for rule in p["syscalls"]:
        assert len(rule["names"]) == len(set(rule["names"]))


OCI_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
}


def test_localhost_oci_profile_is_kept() -> None:
    assert localhost_profile(OCI_PROFILE) == OCI_PROFILE


def test_localhost_docker_profile_is_converted() -> None:
    docker = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        ],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": []},
            {"name": "write", "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["mount"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
            },
            {
                "names": ["arch_prctl"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"arches": ["amd64"]},
            },
            {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "excludes": {"caps": ["CAP_SYS_ADMIN"]},
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        ],
    }
    out = localhost_profile(docker, "x86_64", caps=[])
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert out["defaultErrnoRet"] == 1
    names = [r["names"] for r in out["syscalls"]]
    assert names == [["read"], ["write"], ["arch_prctl"], ["clone"], ["kill"]]
    assert out["syscalls"][-1]["errnoRet"] == 13
    with_admin = localhost_profile(docker, "x86_64", caps=["CAP_SYS_ADMIN"])
    assert [r["names"] for r in with_admin["syscalls"]][2:4] == [["mount"], ["arch_prctl"]]
    assert ["clone"] not in [r["names"] for r in with_admin["syscalls"]]


@pytest.mark.parametrize(
    "bad",
    [{}, {"defaultAction": 3}, {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"]}]}],
)
def test_localhost_malformed_profiles(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="seccomp profile"):
        localhost_profile(bad)
