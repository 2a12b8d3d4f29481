"""User resolution from the image's /etc/passwd and /etc/group."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.core.model import SupplementalGroupsPolicy
from cri_async.oci.user import (
    GroupEntry,
    PasswdEntry,
    ResolvedUser,
    UserError,
    parse_group,
    parse_passwd,
    resolve_user,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:1000:1000:App User:/home/app:/bin/sh
broken line without fields
bad:x:notanumber:1:::
+nisuser::::::
web:x:1001:1001
"""

GROUP = """\
root:x:0:
wheel:x:10:root,app
audio:x:29:app
video:x:44:web, app
app:x:1000:
web:x:1001:
nogroup:x:65534:
"""

MERGE = SupplementalGroupsPolicy.MERGE
STRICT = SupplementalGroupsPolicy.STRICT


def resolve(**kwargs: Any) -> ResolvedUser:
    args: dict[str, Any] = {
        "image_user": "",
        "run_as_user": None,
        "run_as_group": None,
        "run_as_username": "",
        "supplemental_groups": (),
        "policy": MERGE,
        "passwd": PASSWD,
        "group": GROUP,
    }
    args.update(kwargs)
    return resolve_user(**args)


def test_parse_passwd_skips_comments_blank_malformed_and_nis_lines() -> None:
    entries = parse_passwd(PASSWD)
    assert [e.name for e in entries] == ["root", "daemon", "nobody", "app", "web"]
    assert entries[3] == PasswdEntry("app", 1000, 1000, "App User", "/home/app", "/bin/sh")
    assert entries[4] == PasswdEntry("web", 1001, 1001)  # missing trailing fields are fine


def test_parse_group_members() -> None:
    groups = {g.name: g for g in parse_group(GROUP)}
    assert groups["wheel"] == GroupEntry("wheel", 10, ("root", "app"))
    assert groups["video"].members == ("web", "app")  # whitespace around members dropped
    assert groups["root"].members == ()


def test_parse_rejects_out_of_range_ids() -> None:
    assert parse_passwd("big:x:4294967296:0::/:") == []
    assert parse_group("big:x:-1:") == []


def test_default_is_root_with_root_home() -> None:
    assert resolve() == ResolvedUser(0, 0, (0, 10), "/root")  # root is in wheel


def test_default_without_passwd_is_uid_and_gid_zero() -> None:
    assert resolve(passwd=None, group=None) == ResolvedUser(0, 0, (0,), "/")


def test_numeric_image_user_found_in_passwd_takes_its_primary_group() -> None:
    user = resolve(image_user="1000")
    assert (user.uid, user.gid, user.home) == (1000, 1000, "/home/app")
    assert user.additional_gids == (10, 29, 44, 1000)


def test_numeric_user_missing_from_passwd_gets_group_zero() -> None:
    assert resolve(image_user="4242") == ResolvedUser(4242, 0, (0,), "/")


def test_numeric_user_without_passwd_file_is_fine() -> None:
    assert resolve(image_user="4242", passwd=None, group=None) == ResolvedUser(4242, 0, (0,))


def test_user_name_from_passwd() -> None:
    user = resolve(image_user="nobody")
    assert (user.uid, user.gid, user.home) == (65534, 65534, "/nonexistent")


def test_unknown_user_name_is_an_error() -> None:
    with pytest.raises(UserError, match="unable to find user 'ghost'"):
        resolve(image_user="ghost")


def test_user_name_without_passwd_file_is_an_error() -> None:
    with pytest.raises(UserError, match="no /etc/passwd"):
        resolve(image_user="app", passwd=None)


def test_uid_colon_gid_numeric_uses_both_as_given() -> None:
    user = resolve(image_user="1000:44")
    assert (user.uid, user.gid) == (1000, 44)
    # Merge still adds the groups listing the user (found by uid).
    assert user.additional_gids == (10, 29, 44)


def test_user_colon_group_names() -> None:
    user = resolve(image_user="app:audio")
    assert (user.uid, user.gid) == (1000, 29)


def test_numeric_user_with_group_name() -> None:
    user = resolve(image_user="4242:video")
    assert (user.uid, user.gid, user.additional_gids) == (4242, 44, (44,))


def test_unknown_group_name_is_an_error() -> None:
    with pytest.raises(UserError, match="unable to find group 'ghosts'"):
        resolve(image_user="app:ghosts")


def test_group_name_without_group_file_is_an_error() -> None:
    with pytest.raises(UserError, match="no /etc/group"):
        resolve(image_user="app:audio", group=None)


@pytest.mark.parametrize("bad", ["a:b:c", "app:", ":audio", "1000:"])
def test_malformed_image_user(bad: str) -> None:
    with pytest.raises(UserError, match="invalid image user"):
        resolve(image_user=bad)


def test_uid_out_of_runc_range() -> None:
    with pytest.raises(UserError, match="out of range"):
        resolve(image_user="2147483648")


def test_run_as_user_overrides_image_user_and_its_group() -> None:
    user = resolve(image_user="app:audio", run_as_user=1001)
    assert (user.uid, user.gid) == (1001, 1001)  # web's primary group, not audio


def test_run_as_group_overrides_the_primary_group() -> None:
    user = resolve(run_as_user=1000, run_as_group=3000)
    assert (user.uid, user.gid) == (1000, 3000)
    assert user.additional_gids == (10, 29, 44, 3000)  # 1000 is no longer the primary group


def test_run_as_group_alone_applies_to_the_image_user() -> None:
    user = resolve(image_user="app", run_as_group=5)
    assert (user.uid, user.gid) == (1000, 5)


def test_run_as_username_wins_over_run_as_user() -> None:
    user = resolve(run_as_username="web", run_as_user=1000)
    assert (user.uid, user.gid) == (1001, 1001)


def test_run_as_username_must_exist() -> None:
    with pytest.raises(UserError, match="'ghost'"):
        resolve(run_as_username="ghost")


def test_run_as_username_with_colon_is_rejected() -> None:
    with pytest.raises(UserError):
        resolve(run_as_username="app:audio")


@pytest.mark.parametrize("field", ["run_as_user", "run_as_group"])
def test_negative_run_as_ids_are_rejected(field: str) -> None:
    with pytest.raises(UserError, match=field):
        resolve(**{field: -1})


def test_merge_policy_adds_group_file_and_supplemental_groups() -> None:
    user = resolve(image_user="app", supplemental_groups=(5000, 29))
    assert user.additional_gids == (10, 29, 44, 1000, 5000)


def test_strict_policy_ignores_the_group_file() -> None:
    user = resolve(image_user="app", supplemental_groups=(5000,), policy=STRICT)
    assert user.additional_gids == (1000, 5000)


def test_strict_policy_without_supplemental_groups_is_just_the_primary_group() -> None:
    assert resolve(image_user="app", policy=STRICT).additional_gids == (1000,)


def test_merge_without_group_file_has_only_primary_and_supplemental() -> None:
    user = resolve(image_user="app", group=None, supplemental_groups=(7,))
    assert user.additional_gids == (7, 1000)


def test_bad_supplemental_group() -> None:
    with pytest.raises(UserError, match="supplemental group"):
        resolve(supplemental_groups=(-3,))


@given(
    uid=st.integers(0, 2**31 - 1),
    gid=st.integers(0, 2**31 - 1) | st.none(),
    groups=st.lists(st.integers(0, 2**31 - 1), max_size=5),
    policy=st.sampled_from(SupplementalGroupsPolicy),
)
def test_additional_gids_always_sorted_unique_and_contain_primary_and_supplemental(
    uid: int, gid: int | None, groups: list[int], policy: SupplementalGroupsPolicy
) -> None:
    user = resolve(run_as_user=uid, run_as_group=gid, supplemental_groups=groups, policy=policy)
    assert user.uid == uid
    assert list(user.additional_gids) == sorted(set(user.additional_gids))
    assert user.gid in user.additional_gids
    assert set(groups) <= set(user.additional_gids)
