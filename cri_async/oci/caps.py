"""Capability sets: CRI add/drop requests applied to the default set, bounded by the host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cri_async.core.model import Capabilities
from cri_async.oci.defaults import ALL_CAPABILITIES, DEFAULT_CAPABILITIES
from cri_async.oci.errors import SpecError

_ORDER = {name: i for i, name in enumerate(ALL_CAPABILITIES)}


def ordered(caps: Iterable[str]) -> list[str]:
    """Capabilities in kernel bit order (names unknown here last, alphabetically)."""
    return sorted(set(caps), key=lambda c: (_ORDER.get(c, len(_ORDER)), c))


def normalize_capability(name: str, known: Iterable[str] = ()) -> str:
    """``chown``, ``CHOWN``, ``cap_chown`` -> ``CAP_CHOWN``; SpecError if no such capability.

    ``known`` adds names beyond ALL_CAPABILITIES (a newer kernel's, from its bounding set).
    """
    text = name.strip().upper()
    full = text if text.startswith("CAP_") else "CAP_" + text
    if full not in _ORDER and full not in set(known):
        raise SpecError(f"unknown capability {name!r}")
    return full


def _is_all(name: str) -> bool:
    return name.strip().upper() == "ALL"


def resolve_capabilities(
    requested: Capabilities | None, *, privileged: bool, bounding: frozenset[str]
) -> dict[str, Any]:
    """The OCI ``process.capabilities`` object.

    Start from the defaults (everything when privileged: add/drop are then ignored, as a
    privileged container gets all capabilities); "ALL" in add gives everything, "ALL" in drop
    empties the set, then single adds apply and then single drops (a drop beats an add of the
    same capability). Ambient capabilities are added too. Every set is intersected with the
    host's ``bounding`` set: a process cannot be granted what its runtime does not hold.
    """
    known = set(ALL_CAPABILITIES) | set(bounding)
    ambient: set[str] = set()
    if privileged:
        caps = set(known)
    else:
        caps = set(DEFAULT_CAPABILITIES)
        if requested is not None:
            add = [c for c in requested.add if not _is_all(c)]
            drop = [c for c in requested.drop if not _is_all(c)]
            if any(_is_all(c) for c in requested.add):
                caps = set(known)
            if any(_is_all(c) for c in requested.drop):
                caps = set()
            caps.update(normalize_capability(c, known) for c in add)
            ambient = {normalize_capability(c, known) for c in requested.add_ambient}
            caps |= ambient
            caps.difference_update(normalize_capability(c, known) for c in drop)
    granted = caps & bounding
    ambient &= granted
    # The kernel only lets a process raise an ambient capability that is also inheritable.
    return {
        "bounding": ordered(granted),
        "effective": ordered(granted),
        "permitted": ordered(granted),
        "inheritable": ordered(ambient),
        "ambient": ordered(ambient),
    }
