"""Handler features from a runtime's ``features`` JSON and version: user namespaces only
where the runtime can make idmapped mounts (runc 1.1.5 cannot, crun 1.8.1 can)."""

from __future__ import annotations

import pytest

from cri_async.backends.features import runtime_features, version_tuple
from cri_async.core.ports import HandlerFeatures

RUNC_115 = {
    "mountOptions": ["rbind", "ro", "rro"],
    "linux": {"namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]},
}
RUNC_12 = {
    "mountOptions": ["rbind", "rro"],
    "linux": {"namespaces": ["user"], "mountExtensions": {"idmap": {"enabled": True}}},
}


@pytest.mark.parametrize(
    ("kind", "features", "version", "expected"),
    [
        ("runc", RUNC_115, "", HandlerFeatures(True, False)),  # user ns, but no idmap mounts
        ("runc", RUNC_12, "", HandlerFeatures(True, True)),
        ("crun", None, "1.8.1", HandlerFeatures(True, True)),
        ("crun", None, "1.7.2", HandlerFeatures(False, False)),
        ("crun", None, "", HandlerFeatures(False, False)),
        ("youki", None, "0.3.0", HandlerFeatures(False, False)),
    ],
)
def test_runtime_features(
    kind: str, features: dict[str, object] | None, version: str, expected: HandlerFeatures
) -> None:
    assert runtime_features(kind, features, version) == expected


def test_version_tuple() -> None:
    assert version_tuple("1.1.5+ds1") == (1, 1, 5)
    assert version_tuple("1.8.1") == (1, 8, 1)
    assert version_tuple("1.9-rc1") == (1, 9)
    assert version_tuple("commit: abc") == ()
