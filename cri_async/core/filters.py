"""List filters: id (full or unique prefix), state, pod, and label selectors. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cri_async.core.errors import InvalidArgument

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

S = TypeVar("S")


def validate_label_key(key: str) -> None:
    """Kubernetes label key syntax: ``[prefix/]name``."""
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise InvalidArgument(f"label selector key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        raise InvalidArgument(
            f"label selector key {key!r}: name must be 1-63 characters of [A-Za-z0-9-_.], "
            "starting and ending with an alphanumeric"
        )


def validate_label_value(key: str, value: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise InvalidArgument(
            f"label selector value {value!r} for {key!r}: must be at most 63 characters of "
            "[A-Za-z0-9-_.], starting and ending with an alphanumeric"
        )


def validate_selector(selector: Mapping[str, str]) -> None:
    for key, value in selector.items():
        validate_label_key(key)
        validate_label_value(key, value)


def matches_labels(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Every selector pair must be present with an equal value (CRI selectors are ANDed)."""
    return all(labels.get(k) == v for k, v in selector.items())


def resolve_id(candidates: Iterable[str], id_or_prefix: str) -> list[str]:
    """Ids equal to ``id_or_prefix``, else every id it prefixes."""
    ids = list(candidates)
    if id_or_prefix in ids:
        return [id_or_prefix]
    return [i for i in ids if i.startswith(id_or_prefix)]


@dataclass(frozen=True, slots=True)
class Filter(Generic[S]):
    """A validated list filter; empty fields match everything."""

    id: str = ""
    state: S | None = None
    sandbox_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_selector(self.labels)
