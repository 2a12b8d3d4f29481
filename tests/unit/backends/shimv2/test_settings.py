"""A shimv2 handler's options for the shim, from its config table."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_async.api.containerd.runc.options import oci_pb2
from cri_async.api.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions_pb2
from cri_async.backends.shimv2.records import RUNC_OPTIONS_URL, RUNTIME_OPTIONS_URL
from cri_async.backends.shimv2.settings import options_kind, shim_settings
from cri_async.config import HandlerConfig

ROOT = Path("/run/cri-async/shimv2/h")


def shim(**kw: object) -> HandlerConfig:
    kw.setdefault("runtime_type", "io.containerd.runc.v2")
    return HandlerConfig(backend="shimv2", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "kind"),
    [
        ({}, "runc"),
        ({"runtime_type": "io.containerd.runc.v1"}, "runc"),
        ({"runtime_type": "/opt/bin/containerd-shim-runc-v2"}, "runc"),
        ({"runtime_type": "io.containerd.kata.v2"}, "none"),
        ({"runtime_type": "io.containerd.kata.v2", "config_path": "/etc/kata/c.toml"}, "runtime"),
        ({"runtime_type": "io.containerd.runsc.v1", "options_type_url": "x.options"}, "runtime"),
        ({"runtime_type": "io.containerd.wasmtime.v1"}, "none"),
        ({"runtime_type": "/opt/bin/containerd-shim-kata-v2"}, "none"),
        ({"shim_options": "none"}, "none"),
        ({"runtime_type": "io.containerd.kata.v2", "shim_options": "runc"}, "runc"),
    ],
)
def test_options_kind(kw: dict[str, object], kind: str) -> None:
    assert options_kind(shim(**kw)) == kind


def test_runc_options_keep_the_runtime_state_under_the_handler_root() -> None:
    s = shim_settings(shim(binary="crun", shim_namespace="k8s", shim_timeout=7.0), ROOT)
    assert s.options is not None and s.options.type_url == RUNC_OPTIONS_URL
    opts = oci_pb2.Options.FromString(s.options.value)
    assert (opts.root, opts.binary_name) == (str(ROOT / "runc"), "crun")
    assert (s.runc_binary, s.namespace, s.timeout) == ("crun", "k8s", 7.0)
    assert shim_settings(shim(), ROOT).runc_binary == "runc"


def test_runtime_options_and_none() -> None:
    s = shim_settings(
        shim(
            runtime_type="io.containerd.runsc.v1",
            config_path="/etc/containerd/runsc.toml",
            options_type_url="io.containerd.runsc.v1.options",
            sandbox_task=True,
            infra_binary="/bin/busybox",
        ),
        ROOT,
    )
    assert s.options is not None and s.options.type_url == RUNTIME_OPTIONS_URL
    opts = runtimeoptions_pb2.Options.FromString(s.options.value)
    assert (opts.config_path, opts.type_url) == (
        "/etc/containerd/runsc.toml",
        "io.containerd.runsc.v1.options",
    )
    assert (s.runc_binary, s.sandbox_task, s.infra_binary) == (None, True, "/bin/busybox")
    none = shim_settings(shim(runtime_type="io.containerd.wasmtime.v1"), ROOT)
    assert none.options is None and none.runc_binary is None
