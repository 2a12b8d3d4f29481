"""The deprecated seccomp_profile_path / apparmor_profile strings as profiles (containerd's
reading), the new fields winning, and bad strings refused naming the field."""

from __future__ import annotations

import pytest

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.core.errors import InvalidArgument
from cri_async.core.model import ProfileType, SecurityProfile
from cri_async.services import convert, legacyprofiles


@pytest.mark.parametrize(
    ("path", "profile"),
    [
        ("", None),
        ("runtime/default", SecurityProfile(ProfileType.RUNTIME_DEFAULT)),
        ("docker/default", SecurityProfile(ProfileType.RUNTIME_DEFAULT)),
        ("unconfined", SecurityProfile(ProfileType.UNCONFINED)),
        (
            "localhost//var/lib/k/p.json",
            SecurityProfile(ProfileType.LOCALHOST, "/var/lib/k/p.json"),
        ),
        ("localhost/k8s-nginx", SecurityProfile(ProfileType.LOCALHOST, "k8s-nginx")),
    ],
)
def test_legacy_profile_strings(path: str, profile: SecurityProfile | None) -> None:
    assert legacyprofiles.legacy_profile(path, "f") == profile


@pytest.mark.parametrize("path", ["/tmp/profile.json", "localhost/", "Unconfined", "default"])
def test_other_legacy_strings_are_invalid(path: str) -> None:
    with pytest.raises(InvalidArgument, match="seccomp_profile_path"):
        legacyprofiles.legacy_profile(path, "container linux.security_context.seccomp_profile_path")


def test_container_deprecated_fields_are_read() -> None:
    cfg = container_config("c", "busybox")
    sc = cfg.linux.security_context
    sc.seccomp_profile_path = "localhost//tmp/block.json"
    sc.apparmor_profile = "unconfined"
    sec = convert.container_config(cfg).security
    assert sec.seccomp == SecurityProfile(ProfileType.LOCALHOST, "/tmp/block.json")
    assert sec.apparmor == SecurityProfile(ProfileType.UNCONFINED)


def test_the_new_fields_win() -> None:
    cfg = container_config("c", "busybox")
    sc = cfg.linux.security_context
    sc.seccomp_profile_path = "not-a-profile"  # ignored: superseded
    sc.seccomp.profile_type = pb.SecurityProfile.Unconfined
    sc.apparmor_profile = "localhost/x"
    sc.apparmor.profile_type = pb.SecurityProfile.RuntimeDefault
    sec = convert.container_config(cfg).security
    assert sec.seccomp == SecurityProfile(ProfileType.UNCONFINED)
    assert sec.apparmor == SecurityProfile(ProfileType.RUNTIME_DEFAULT)


def test_bad_deprecated_strings_name_their_field() -> None:
    cfg = container_config("c", "busybox")
    cfg.linux.security_context.seccomp_profile_path = "/tmp/block.json"
    with pytest.raises(InvalidArgument, match=r"container linux\.security_context\.seccomp_"):
        convert.container_config(cfg)
    cfg = container_config("c", "busybox")
    cfg.linux.security_context.apparmor_profile = "my-profile"
    with pytest.raises(InvalidArgument, match=r"linux\.security_context\.apparmor_profile"):
        convert.container_config(cfg)
    pcfg = pod_config("p")
    pcfg.linux.security_context.seccomp_profile_path = "docker/default"
    assert convert.sandbox_config(pcfg).security.seccomp == SecurityProfile(
        ProfileType.RUNTIME_DEFAULT
    )
    pcfg.linux.security_context.seccomp_profile_path = "x.json"
    with pytest.raises(InvalidArgument, match=r"pod sandbox linux\.security_context\.seccomp"):
        convert.sandbox_config(pcfg)
