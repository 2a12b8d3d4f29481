"""The deprecated ``seccomp_profile_path`` and ``apparmor_profile`` strings of the CRI
security contexts, read as containerd reads them. The profile fields that superseded them
win when set (the strings are then not looked at); ``convert`` picks."""

from __future__ import annotations

from cri_async.core import model as m
from cri_async.core.errors import InvalidArgument

_LEGACY_PROFILES = {
    "runtime/default": m.ProfileType.RUNTIME_DEFAULT,
    "docker/default": m.ProfileType.RUNTIME_DEFAULT,
    "unconfined": m.ProfileType.UNCONFINED,
}
LOCALHOST_PREFIX = "localhost/"


def legacy_profile(path: str, field: str) -> m.SecurityProfile | None:
    """A deprecated ``seccomp_profile_path``/``apparmor_profile`` string as a profile
    (containerd's reading): "" is unset, ``localhost/<ref>`` names a profile on the node
    (a seccomp JSON file's path, an AppArmor profile's name)."""
    if not path:
        return None
    kind = _LEGACY_PROFILES.get(path)
    if kind is not None:
        return m.SecurityProfile(kind)
    ref = path.removeprefix(LOCALHOST_PREFIX)
    if ref == path or not ref:
        raise InvalidArgument(
            f"{field} {path!r} is not a profile: use 'runtime/default', 'docker/default', "
            "'unconfined' or 'localhost/<profile>'"
        )
    return m.SecurityProfile(m.ProfileType.LOCALHOST, ref)
