"""Capabilities: defaults, add/drop with ALL, spellings, privileged, host bounding set."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.core.model import Capabilities
from cri_async.oci import SpecError
from cri_async.oci.caps import normalize_capability, ordered, resolve_capabilities
from cri_async.oci.defaults import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    capabilities_from_mask,
)

ALL = frozenset(ALL_CAPABILITIES)
NO_SYS_RESOURCE = ALL - {"CAP_SYS_RESOURCE"}


def caps(
    add: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
    ambient: tuple[str, ...] = (),
    *,
    privileged: bool = False,
    bounding: frozenset[str] = ALL,
) -> set[str]:
    out = resolve_capabilities(
        Capabilities(add=add, drop=drop, add_ambient=ambient),
        privileged=privileged,
        bounding=bounding,
    )
    assert out["bounding"] == out["effective"] == out["permitted"]
    return set(out["bounding"])


def test_fourteen_defaults() -> None:
    assert len(DEFAULT_CAPABILITIES) == 14
    out = resolve_capabilities(None, privileged=False, bounding=ALL)
    assert set(out["bounding"]) == set(DEFAULT_CAPABILITIES)
    assert out["inheritable"] == out["ambient"] == []


def test_output_is_in_kernel_order() -> None:
    out = resolve_capabilities(None, privileged=False, bounding=ALL)
    assert out["bounding"][:3] == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
    assert out["bounding"] == ordered(out["bounding"])


@pytest.mark.parametrize("spelling", ["NET_ADMIN", "CAP_NET_ADMIN", "net_admin", "cap_net_admin"])
def test_add_accepts_both_spellings(spelling: str) -> None:
    assert "CAP_NET_ADMIN" in caps(add=(spelling,))


def test_drop() -> None:
    assert caps(drop=("CHOWN", "CAP_KILL")) == set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN", "CAP_KILL"}


def test_add_all_then_drop_one() -> None:
    assert caps(add=("ALL",), drop=("CHOWN",)) == ALL - {"CAP_CHOWN"}


def test_drop_all_then_add_one() -> None:
    assert caps(add=("NET_BIND_SERVICE",), drop=("ALL",)) == {"CAP_NET_BIND_SERVICE"}


def test_all_is_case_insensitive() -> None:
    assert caps(drop=("all",)) == set()


def test_add_and_drop_all_leaves_only_single_adds() -> None:
    assert caps(add=("ALL", "SYS_TIME"), drop=("ALL",)) == {"CAP_SYS_TIME"}


def test_drop_beats_add_of_the_same_capability() -> None:
    assert "CAP_SYS_ADMIN" not in caps(add=("SYS_ADMIN",), drop=("SYS_ADMIN",))


def test_unknown_capability_is_an_error() -> None:
    with pytest.raises(SpecError, match="unknown capability 'CAP_FLY'"):
        caps(add=("CAP_FLY",))
    with pytest.raises(SpecError):
        caps(drop=("NOPE",))


def test_capability_known_only_to_the_host_is_accepted() -> None:
    assert normalize_capability("future_cap", {"CAP_FUTURE_CAP"}) == "CAP_FUTURE_CAP"


def test_bounding_set_without_sys_resource_removes_it_from_every_set() -> None:
    out = resolve_capabilities(
        Capabilities(add=("SYS_RESOURCE",), add_ambient=("SYS_RESOURCE",)),
        privileged=False,
        bounding=NO_SYS_RESOURCE,
    )
    for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        assert "CAP_SYS_RESOURCE" not in out[key]


def test_add_all_is_limited_to_the_host_bounding_set() -> None:
    assert caps(add=("ALL",), bounding=NO_SYS_RESOURCE) == NO_SYS_RESOURCE


def test_privileged_gets_every_capability_the_host_has() -> None:
    assert caps(privileged=True) == ALL
    assert caps(privileged=True, bounding=NO_SYS_RESOURCE) == NO_SYS_RESOURCE


def test_privileged_ignores_drop() -> None:
    assert caps(drop=("ALL",), privileged=True) == ALL


def test_ambient_capabilities_are_granted_and_inheritable() -> None:
    out = resolve_capabilities(
        Capabilities(add_ambient=("NET_BIND_SERVICE", "NET_ADMIN")),
        privileged=False,
        bounding=ALL,
    )
    assert out["ambient"] == ["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"]
    assert out["inheritable"] == out["ambient"]
    assert "CAP_NET_ADMIN" in out["permitted"]


def test_dropped_ambient_capability_is_not_ambient() -> None:
    out = resolve_capabilities(
        Capabilities(add_ambient=("NET_ADMIN",), drop=("NET_ADMIN",)),
        privileged=False,
        bounding=ALL,
    )
    assert out["ambient"] == []


def test_capabilities_from_mask() -> None:
    assert capabilities_from_mask("000001ffffffffff") == ALL  # 41 bits: all known caps
    assert capabilities_from_mask("0000000000000001") == {"CAP_CHOWN"}
    assert capabilities_from_mask(1 << 21 | 1 << 63) == {"CAP_SYS_ADMIN"}  # unknown bit ignored


cap_names = st.sampled_from(ALL_CAPABILITIES).map(
    lambda c: c.removeprefix("CAP_").lower() if len(c) % 2 else c
)


@given(
    add=st.lists(cap_names | st.just("ALL"), max_size=6),
    drop=st.lists(cap_names | st.just("ALL"), max_size=6),
    ambient=st.lists(cap_names, max_size=3),
    bounding=st.frozensets(st.sampled_from(ALL_CAPABILITIES)),
    privileged=st.booleans(),
)
def test_every_set_is_within_the_host_bounding_set(
    add: list[str],
    drop: list[str],
    ambient: list[str],
    bounding: frozenset[str],
    privileged: bool,
) -> None:
    out = resolve_capabilities(
        Capabilities(add=tuple(add), drop=tuple(drop), add_ambient=tuple(ambient)),
        privileged=privileged,
        bounding=bounding,
    )
    for key, values in out.items():
        assert set(values) <= bounding, key
        assert len(values) == len(set(values))
    assert set(out["ambient"]) <= set(out["permitted"])
    assert set(out["inheritable"]) == set(out["ambient"])
