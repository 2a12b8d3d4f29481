"""A container's Linux security settings in the spec: AppArmor profile, SELinux labels,
the seccomp section and the masked and read-only paths (pure).

Capabilities are resolved in caps.py and seccomp profiles built in seccomp.py; this module
decides which of them a container gets from its security context, as containerd does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cri_async.core.model import ProfileType, SecurityProfile, SELinuxOptions
from cri_async.oci.defaults import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
from cri_async.oci.errors import SpecError, SpecUnsupported
from cri_async.oci.inputs import HostFacts
from cri_async.oci.seccomp import localhost_profile, runtime_default_profile


def apparmor_profile(
    profile: SecurityProfile | None, *, privileged: bool, host: HostFacts
) -> str | None:
    """The AppArmor profile name, or None for none (unconfined / no AppArmor on the host).

    Unset means RuntimeDefault (as in containerd, following kubernetes#51746). Privileged
    containers get no default profile but keep an explicit Localhost one. On a host without
    AppArmor only unset and Unconfined are possible: a profile that cannot be applied is
    refused (SpecUnsupported), as containerd does, never silently dropped.
    """
    if not host.apparmor:
        if profile is None or profile.type is ProfileType.UNCONFINED:
            return None
        name = profile.localhost_ref or profile.type.value
        raise SpecUnsupported(
            f"apparmor profile {name!r} (security_context.apparmor) cannot be applied: "
            "AppArmor is not enabled on this host"
        )
    kind = profile.type if profile is not None else ProfileType.RUNTIME_DEFAULT
    if profile is not None and kind is not ProfileType.LOCALHOST and profile.localhost_ref:
        raise SpecError("apparmor: localhost_ref is only valid with the Localhost profile type")
    if kind is ProfileType.UNCONFINED:
        return None
    if kind is ProfileType.RUNTIME_DEFAULT:
        if privileged or not host.apparmor_default_profile:
            return None
        return host.apparmor_default_profile
    assert profile is not None
    name = profile.localhost_ref.removeprefix("localhost/")
    if not name:
        raise SpecError("apparmor: Localhost profile without a profile name")
    return name


def selinux_labels(
    options: SELinuxOptions | None, *, privileged: bool, host: HostFacts
) -> tuple[str | None, str | None]:
    """(process label, mount label) from explicit options; None where nothing is set.

    Missing parts take the usual container defaults (system_u, system_r, container_t, s0).
    Picking a unique MCS level per pod is the caller's job: pass it in ``level``.
    """
    if not host.selinux or options is None:
        return None, None
    if not (options.user or options.role or options.type or options.level):
        return None, None
    user = options.user or "system_u"
    level = options.level or "s0"
    process = f"{user}:{options.role or 'system_r'}:{options.type or 'container_t'}:{level}"
    mount = f"{user}:object_r:container_file_t:{level}"
    return (None if privileged else process), mount


def seccomp_section(
    profile: SecurityProfile | None,
    *,
    privileged: bool,
    bounding: list[str],
    host: HostFacts,
    localhost: Mapping[str, Any] | None,
    default_when_unset: bool,
) -> dict[str, Any] | None:
    """``linux.seccomp``, or None for none (privileged, Unconfined, unset by default)."""
    if privileged:
        return None
    if profile is None:
        if not default_when_unset:
            return None
        profile = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    if profile.type is not ProfileType.LOCALHOST and profile.localhost_ref:
        raise SpecError("seccomp: localhost_ref is only valid with the Localhost profile type")
    if profile.type is ProfileType.UNCONFINED:
        return None
    if profile.type is ProfileType.RUNTIME_DEFAULT:
        return runtime_default_profile(host.arch, caps=bounding)
    if localhost is None:
        raise SpecError(f"seccomp profile {profile.localhost_ref!r} was not loaded")
    try:
        return localhost_profile(localhost, host.arch, caps=bounding)
    except (ValueError, TypeError, AttributeError) as e:
        raise SpecError(f"seccomp profile {profile.localhost_ref!r}: {e}") from e


def hidden_paths(
    masked: tuple[str, ...], readonly: tuple[str, ...], *, privileged: bool
) -> tuple[list[str], list[str]]:
    """(maskedPaths, readonlyPaths): the defaults unless the config names its own; none for
    a privileged container."""
    if privileged:
        return [], []
    return list(masked or DEFAULT_MASKED_PATHS), list(readonly or DEFAULT_READONLY_PATHS)
