"""A shim v2 handler's settings, from its ``[runtimes."<name>"]`` table (pure).

The options the shim gets (on ``start``'s stdin and in Create), as containerd's CRI plugin
gives them:

* ``runc``: ``containerd.runc.v1.Options`` with ``root`` under the handler's root (the
  shim appends its namespace; the default ``/run/containerd/runc`` is shared with any
  containerd on the host) and ``binary_name`` (crun instead of runc, say);
* ``runtime``: ``runtimeoptions.v1.Options{config_path, type_url}`` (Kata's
  configuration.toml; gVisor's runsc.toml with ``io.containerd.runsc.v1.options``);
* ``none``: no options (runwasi shims; Kata with its default configuration);
* ``auto``: ``runc`` for a runc shim, ``runtime`` when a config path or type URL is set,
  else ``none``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import any_pb2

from cri_async.config import HandlerConfig

from .bootstrap import binary_name
from .records import runc_options, runtime_options

__all__ = ["ShimSettings", "options_kind", "shim_settings"]


@dataclass(frozen=True, slots=True)
class ShimSettings:
    runtime_type: str
    """A runtime type (``io.containerd.kata.v2``) or a shim binary's absolute path."""
    namespace: str
    options: any_pb2.Any | None
    runc_binary: str | None
    """The OCI runtime a runc shim runs (``runc`` unless configured); None for others."""
    sandbox_task: bool
    shim_stats: bool
    infra_binary: str
    timeout: float


def _is_runc_shim(runtime_type: str) -> bool:
    if os.path.isabs(runtime_type):
        return os.path.basename(runtime_type).startswith("containerd-shim-runc-")
    try:
        return binary_name(runtime_type).startswith("containerd-shim-runc-")
    except ValueError:
        return False


def options_kind(h: HandlerConfig) -> str:
    """``runc``, ``runtime`` or ``none``: what ``shim_options`` (``auto`` resolved) says."""
    if h.shim_options != "auto":
        return h.shim_options
    if _is_runc_shim(h.runtime_type):
        return "runc"
    return "runtime" if h.config_path or h.options_type_url else "none"


def shim_settings(h: HandlerConfig, root: Path) -> ShimSettings:
    """The settings of a ``backend = "shimv2"`` handler whose state lives under ``root``."""
    kind = options_kind(h)
    options: any_pb2.Any | None = None
    if kind == "runc":
        options = runc_options(root=str(root / "runc"), binary_name=h.binary)
    elif kind == "runtime":
        options = runtime_options(config_path=h.config_path, type_url=h.options_type_url)
    return ShimSettings(
        runtime_type=h.runtime_type,
        namespace=h.shim_namespace,
        options=options,
        runc_binary=(h.binary or "runc") if kind == "runc" else None,
        sandbox_task=h.sandbox_task,
        shim_stats=h.shim_stats,
        infra_binary=h.infra_binary,
        timeout=h.shim_timeout,
    )
