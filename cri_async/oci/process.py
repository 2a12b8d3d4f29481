"""The spec's ``process``: command line, environment, working directory, user,
capabilities, rlimits, LSM profile and oom_score_adj; the same for ``runc exec`` (pure)."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from cri_async.core.model import Container, ContainerConfig, Image, Resources
from cri_async.oci.caps import resolve_capabilities
from cri_async.oci.defaults import DEFAULT_NOFILE, DEFAULT_PATH_ENV
from cri_async.oci.errors import SpecError
from cri_async.oci.inputs import HostFacts
from cri_async.oci.security import apparmor_profile, selinux_labels
from cri_async.oci.user import ResolvedUser

_OOM_MIN, _OOM_MAX = -1000, 1000


def process_args(config: ContainerConfig, image: Image) -> list[str]:
    """The command line: kubelet's command/args merged with the image's ENTRYPOINT/CMD.

    command replaces the entrypoint and drops the image's CMD; args replace CMD. An image
    ENTRYPOINT of exactly [""] means "no entrypoint". SpecError if nothing is left.
    """
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(image.cmd)
        if list(image.entrypoint) != [""]:
            command = list(image.entrypoint)
    argv = command + args
    if not argv:
        raise SpecError("no command specified")
    return argv


def _env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_env(*layers: Sequence[str]) -> list[str]:
    """Concatenate KEY=VALUE lists; a later value for a key replaces the earlier one in place.

    So keys stay unique, the first occurrence fixes a key's position and the last its value.
    """
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            merged[_env_key(entry)] = entry
    return list(merged.values())


def _env(config: ContainerConfig, image: Image, hostname: str, home: str) -> list[str]:
    # PATH and HOSTNAME first (the image may override them), then the image's environment,
    # then kubelet's; HOME last if nobody set it (runc would also fill it in).
    env = merge_env(
        [DEFAULT_PATH_ENV],
        [f"HOSTNAME={hostname}"] if hostname else [],
        image.env,
        [f"{k}={v}" for k, v in config.envs],
    )
    if not any(_env_key(e) == "HOME" for e in env):
        env.append(f"HOME={home}")
    return env


def _cwd(config: ContainerConfig, image: Image) -> str:
    cwd = config.working_dir or image.working_dir or "/"
    return posixpath.normpath(posixpath.join("/", cwd))


def oom_score_adj(resources: Resources | None, host: HostFacts) -> int:
    """The requested score, clamped to [-1000, 1000] and to no less than our own."""
    wanted = resources.oom_score_adj if resources is not None else 0
    return min(_OOM_MAX, max(wanted, host.min_oom_score_adj, _OOM_MIN))


def _rlimits(host: HostFacts) -> list[dict[str, Any]]:
    nofile = min(DEFAULT_NOFILE, host.nofile_hard)
    return [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]


def base_process(
    container: Container,
    image: Image,
    args: list[str],
    *,
    tty: bool,
    user: ResolvedUser,
    host: HostFacts,
    hostname: str,
    sandbox_privileged: bool | None,
) -> dict[str, Any]:
    """The ``process`` object without oomScoreAdj (``sandbox_privileged`` None: not checked,
    for exec into an existing container)."""
    config = container.config
    sec = config.security
    if sec.privileged and sandbox_privileged is False:
        raise SpecError("privileged containers are not allowed in an unprivileged sandbox")
    process: dict[str, Any] = {
        "terminal": tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": args,
        "env": _env(config, image, hostname, user.home),
        "cwd": _cwd(config, image),
        "capabilities": resolve_capabilities(
            sec.capabilities, privileged=sec.privileged, bounding=host.bounding_caps
        ),
        "rlimits": _rlimits(host),
        "noNewPrivileges": sec.no_new_privs,
    }
    apparmor = apparmor_profile(sec.apparmor, privileged=sec.privileged, host=host)
    if apparmor:
        process["apparmorProfile"] = apparmor
    label, _ = selinux_labels(sec.selinux, privileged=sec.privileged, host=host)
    if label:
        process["selinuxLabel"] = label
    return process


def exec_process(
    container: Container,
    image: Image,
    cmd: Sequence[str],
    *,
    tty: bool,
    user: ResolvedUser,
    host: HostFacts,
    hostname: str = "",
) -> dict[str, Any]:
    """The ``process`` object for ``runc exec --process``: the container's identity, ``cmd``.

    User, environment (pass the pod's ``hostname`` for HOSTNAME), cwd, capabilities,
    noNewPrivileges, rlimits and LSM profile are the container's; seccomp and namespaces
    come from the container itself.
    """
    if not cmd:
        raise SpecError("no command specified")
    return base_process(
        container,
        image,
        list(cmd),
        tty=tty,
        user=user,
        host=host,
        hostname=hostname,
        sandbox_privileged=None,
    )
