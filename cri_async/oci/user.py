"""Resolving a container's user from the image's /etc/passwd and /etc/group.

Reading those files out of the rootfs is the caller's I/O; this module only parses their text
and applies the rules kubelet expects (those of containerd's CRI plugin):

* the user string is ``run_as_username``, else ``run_as_user``, else the image's USER,
  else root; ``run_as_group`` overrides the group part;
* a numeric user missing from /etc/passwd is fine (primary group 0); a user *name* must exist;
* ``user:group`` takes each part as a number or a name looked up in passwd / group;
* the additional groups are the primary group, the supplemental groups from the security
  context and, with the Merge policy only, the groups of /etc/group listing the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cri_async.core.model import SupplementalGroupsPolicy

# runc refuses ids above the int32 range, although the kernel would accept more.
MAX_ID = 2**31 - 1


class UserError(ValueError):
    """The requested user or group cannot be resolved (report as InvalidArgument)."""


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str = "/"


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    gecos: str = ""
    home: str = ""
    shell: str = ""


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...] = ()


def _records(text: str, min_fields: int) -> list[list[str]]:
    rows = []
    for raw in text.splitlines():
        line = raw.strip()
        # Comments, blank lines and NIS compat entries (+name / -name) name nobody.
        if not line or line[0] in "#+-":
            continue
        fields = line.split(":")
        if len(fields) >= min_fields and fields[0]:
            rows.append(fields)
    return rows


def _id(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit():  # also rejects signs and empty strings
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd file; malformed lines are skipped, as libc does."""
    entries = []
    for f in _records(text, 4):
        uid, gid = _id(f[2]), _id(f[3])
        if uid is None or gid is None:
            continue
        f += [""] * (7 - len(f))
        entries.append(PasswdEntry(f[0], uid, gid, f[4], f[5], f[6]))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group file; malformed lines are skipped."""
    entries = []
    for f in _records(text, 3):
        gid = _id(f[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in f[3].split(",") if m.strip()) if len(f) > 3 else ()
        entries.append(GroupEntry(f[0], gid, members))
    return entries


def _numeric(part: str, what: str, spec: str) -> int | None:
    """The id if ``part`` is a number; None if it is a name."""
    if part.isdigit():
        value = int(part)
        if value > MAX_ID:
            raise UserError(f"invalid user {spec!r}: {what} {value} out of range (max {MAX_ID})")
        return value
    if part.lstrip("-").isdigit():
        raise UserError(f"invalid user {spec!r}: negative {what}")
    return None


def resolve_user(
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_group: int | None,
    run_as_username: str,
    supplemental_groups: Sequence[int],
    policy: SupplementalGroupsPolicy,
    passwd: str | None,
    group: str | None,
) -> ResolvedUser:
    """The uid, gid and additional gids a container runs with.

    ``passwd`` and ``group`` are the texts of the image's /etc/passwd and /etc/group, or
    None when the file does not exist. Raises UserError naming what could not be resolved.
    """
    if run_as_user is not None and not 0 <= run_as_user <= MAX_ID:
        raise UserError(f"run_as_user {run_as_user} out of range (0..{MAX_ID})")
    if run_as_group is not None and not 0 <= run_as_group <= MAX_ID:
        raise UserError(f"run_as_group {run_as_group} out of range (0..{MAX_ID})")
    for g in supplemental_groups:
        if not 0 <= g <= MAX_ID:
            raise UserError(f"supplemental group {g} out of range (0..{MAX_ID})")

    group_part: str | None = None
    if run_as_username:
        if ":" in run_as_username:
            raise UserError(f"invalid run_as_username {run_as_username!r}: contains ':'")
        spec = user_part = run_as_username
    elif run_as_user is not None:
        spec = user_part = str(run_as_user)
    elif image_user:
        spec = image_user
        parts = image_user.split(":")
        if len(parts) > 2 or not all(parts):
            raise UserError(f"invalid image user {image_user!r}: expected user[:group]")
        user_part = parts[0]
        group_part = parts[1] if len(parts) == 2 else None
    else:
        spec = user_part = "0"
    if run_as_group is not None:
        group_part = str(run_as_group)

    users = parse_passwd(passwd) if passwd is not None else None
    groups = parse_group(group) if group is not None else None

    entry: PasswdEntry | None = None
    uid = _numeric(user_part, "uid", spec)
    if uid is None:
        if users is None:
            raise UserError(f"unable to find user {user_part!r}: the image has no /etc/passwd")
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            raise UserError(f"unable to find user {user_part!r} in the image's /etc/passwd")
        uid = entry.uid
    elif users is not None:
        entry = next((u for u in users if u.uid == uid), None)

    gid = entry.gid if entry is not None else 0
    if group_part is not None:
        explicit = _numeric(group_part, "gid", spec)
        if explicit is None:
            if groups is None:
                raise UserError(f"unable to find group {group_part!r}: the image has no /etc/group")
            found = next((g for g in groups if g.name == group_part), None)
            if found is None:
                raise UserError(f"unable to find group {group_part!r} in the image's /etc/group")
            explicit = found.gid
        gid = explicit

    gids = {gid, *supplemental_groups}
    if policy is SupplementalGroupsPolicy.MERGE and entry is not None and groups is not None:
        gids.update(g.gid for g in groups if entry.name in g.members)
    home = entry.home if entry is not None and entry.home else "/"
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(sorted(gids)), home=home)
