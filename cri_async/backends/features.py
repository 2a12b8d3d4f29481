"""What a runc-family runtime can do, as Status reports it per handler (pure): from its
``features`` JSON (runc >= 1.1) and its version.

User namespaces are offered only where the runtime can make idmapped mounts: a pod's
volumes (CRI mounts with uid/gid mappings) must keep their ownership inside the pod's user
namespace. runc says so in ``features`` (``linux.mountExtensions.idmap.enabled``, runc >=
1.2); runc 1.1 has user namespaces but no idmapped mounts. crun has no ``features`` command
before 1.9; it honours the ``idmap`` mount option (with the container's own mappings) from
1.8 on, tested with 1.8.1. The root filesystem is idmapped by cri-async itself, whatever
the runtime.

Recursive read-only mounts: runc lists ``rro`` in ``mountOptions``; crun 1.8.1 applies
``rro`` (a submount of the bind is read-only too, tested) but has no ``features`` to say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cri_async.core.ports import HandlerFeatures

CRUN_IDMAP_SINCE = (1, 8)
CRUN_RRO_SINCE = (1, 8)


def version_tuple(text: str) -> tuple[int, ...]:
    """``1.8.1`` / ``1.1.5+ds1`` -> (1, 8, 1) / (1, 1, 5); () when it is no version."""
    out: list[int] = []
    for part in text.split("+", 1)[0].split("-", 1)[0].split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def idmapped_mounts(kind: str, features: Mapping[str, Any] | None, version: str) -> bool:
    linux = (features or {}).get("linux")
    ext = linux.get("mountExtensions") if isinstance(linux, dict) else None
    idmap = ext.get("idmap") if isinstance(ext, dict) else None
    if isinstance(idmap, dict) and idmap.get("enabled") is True:
        return True
    return kind == "crun" and version_tuple(version) >= CRUN_IDMAP_SINCE


def runtime_features(
    kind: str, features: Mapping[str, Any] | None, version: str
) -> HandlerFeatures:
    options = (features or {}).get("mountOptions")
    rro = isinstance(options, list) and "rro" in options
    rro = rro or (kind == "crun" and version_tuple(version) >= CRUN_RRO_SINCE)
    return HandlerFeatures(
        recursive_read_only_mounts=rro, user_namespaces=idmapped_mounts(kind, features, version)
    )
