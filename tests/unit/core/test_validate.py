"""Request validation (pure): what a client's values may and may not be."""

from __future__ import annotations

import pytest

from cri_async.core import validate
from cri_async.core.errors import InvalidArgument
from cri_async.core.model import (
    ContainerConfig,
    ContainerMetadata,
    Device,
    DNSConfig,
    ImageSpec,
    Mount,
    PodMetadata,
    PortMapping,
    SandboxConfig,
)
from cri_async.services.rpc import MAX_STATUS_MESSAGE, status_message


def ctr(**kw: object) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata("c"), ImageSpec("busybox"), **kw)  # type: ignore[arg-type]


def pod(**kw: object) -> SandboxConfig:
    return SandboxConfig(PodMetadata("p", "u", "ns"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "log_directory", "needle"),
    [
        (ctr(log_path="../../etc/x"), "/var/log/pods/p", "must not contain '..'"),
        (ctr(log_path="a/../../x"), "/var/log/pods/p", "must not contain '..'"),
        (ctr(log_path="/var/log/../x"), "", "must not contain '..'"),
        (ctr(log_path="c.log"), "", "is relative, and the pod has no log_directory"),
        (ctr(log_path="c/"), "/logs", "names a directory"),
        (ctr(log_path="c\0.log"), "/logs", "must not contain NUL"),
        (ctr(mounts=(Mount("data", "/srv"),)), "", "mount container_path 'data' must be an"),
        (ctr(mounts=(Mount("/data", "srv"),)), "", "mount host_path 'srv' must be an absolute"),
        (ctr(mounts=(Mount("/data", ""),)), "", "mount host_path '' must be an absolute"),
        (ctr(devices=(Device("/dev/x", "dev/x"),)), "", "device host_path"),
        (ctr(command=("sh", "-c", "a\0b")), "", "command argument"),
        (ctr(envs=(("A=B", "c"),)), "", "env key 'A=B'"),
        (ctr(envs=(("A", "b\0c"),)), "", "env value"),
        (ctr(working_dir="tmp"), "", "working_dir 'tmp' must be an absolute path"),
    ],
)
def test_bad_container_configs(config: ContainerConfig, log_directory: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        validate.container_config(config, log_directory)


def test_good_container_configs() -> None:
    validate.container_config(ctr(log_path="c/0.log"), "/var/log/pods/p")
    validate.container_config(ctr(log_path="/var/log/c.log"), "")
    image_mount = Mount("/data", "", image=ImageSpec("busybox"))
    validate.container_config(ctr(mounts=(image_mount, Mount("/etc/x", "/srv/x"))), "")
    validate.container_config(ctr(command=("sh",), envs=(("A", "b=c"),), working_dir="/w"), "")


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (pod(log_directory="logs"), "log_directory 'logs' must be an absolute path"),
        (pod(cgroup_parent="/kubepods/../../x"), "cgroup_parent .* must not contain '..'"),
        (pod(dns=DNSConfig(servers=("1.1.1.1\nnameserver 6.6.6.6",))), "must be one line"),
        (pod(port_mappings=(PortMapping(host_port=70000),)), "host_port 70000 is not"),
        (pod(port_mappings=(PortMapping(container_port=-1),)), "container_port -1 is not"),
    ],
)
def test_bad_sandbox_configs(config: SandboxConfig, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        validate.sandbox_paths(config)


def test_pod_names_cannot_inject_cni_args() -> None:
    with pytest.raises(InvalidArgument, match="must not contain ';' or '='"):
        validate.pod_name_field("web;IP=10.0.0.9", "pod sandbox metadata.name")
    assert validate.pod_name_field("web-0", "name") == "web-0"


def test_commands() -> None:
    with pytest.raises(InvalidArgument, match="cmd must not be empty"):
        validate.command([], "cmd")
    with pytest.raises(InvalidArgument, match="must not contain NUL"):
        validate.command(["ls", "\0"], "cmd")
    validate.command(["ls", ""], "cmd")


def test_quoted_values_and_status_messages_are_bounded() -> None:
    assert validate.shown("abc") == "'abc'"
    long = validate.shown("x" * 10_000)
    assert len(long) < 120 and "10000 characters" in long
    assert status_message("short") == "short"
    msg = status_message("y" * 100_000)
    assert len(msg) < MAX_STATUS_MESSAGE + 40 and msg.endswith("(98976 more characters)")
