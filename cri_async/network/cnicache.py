"""The CNI attachment cache: per sandbox, what ``setup`` did, so that DEL and CHECK need
nothing else (they work after a restart, with a changed configuration, without the netns).

One JSON file ``<dir>/<sandbox id>.json`` per attachment, replaced atomically. A *pending*
entry (network, arguments, no result) is written before the first ADD, so a crash or a
cancellation in the middle of a setup leaves something a teardown can undo; the results
are added when the chain has run. The JSON layout is versioned by its ``kind``;
``cri-async/cni-attachment/v1`` is::

    {"kind": ..., "sandboxId": str, "netns": str, "ifName": str,
     "network": {"name", "cniVersion", "plugins": [...], "source", "disableCheck"},
     "cniArgs": str, "runtimeConfig": {...}, "loopbackResult": {...} | null,
     "result": {...} | null, "complete": bool}
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async import files
from cri_async.network.cniconf import NetworkConfig
from cri_async.network.cnierrors import CNIError

CACHE_KIND = "cri-async/cni-attachment/v1"
IFNAME = "eth0"  # the pod's interface, the one the network's chain configures
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Attachment:
    """One sandbox's attachment as recorded: pending until ``complete``."""

    sandbox_id: str
    netns: str  # the namespace path given to setup
    network: NetworkConfig  # as negotiated: cni_version is the version every call speaks
    cni_args: str
    runtime_config: Mapping[str, Any]  # the capability arguments of ADD, given to DEL too
    if_name: str = IFNAME
    loopback_result: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None  # the chain's final ADD result
    complete: bool = False

    @classmethod
    def pending(
        cls,
        sandbox_id: str,
        netns: str,
        network: NetworkConfig,
        cni_args: str,
        runtime_config: Mapping[str, Any],
    ) -> Attachment:
        # Only the negotiated version is recorded: other allowed ones do not matter any more.
        net = dataclasses.replace(network, cni_versions=(network.cni_version,))
        return cls(sandbox_id, netns, net, cni_args, dict(runtime_config))


def encode(entry: Attachment) -> bytes:
    net = entry.network
    doc = {
        "kind": CACHE_KIND,
        "sandboxId": entry.sandbox_id,
        "netns": entry.netns,
        "ifName": entry.if_name,
        "network": {
            "name": net.name,
            "cniVersion": net.cni_version,
            "plugins": list(net.plugins),
            "source": net.source,
            "disableCheck": net.disable_check,
        },
        "cniArgs": entry.cni_args,
        "runtimeConfig": dict(entry.runtime_config),
        "loopbackResult": _opt_dict(entry.loopback_result),
        "result": _opt_dict(entry.result),
        "complete": entry.complete,
    }
    return json.dumps(doc, indent=1).encode()


def decode(data: bytes) -> Attachment:
    """Parse a cache file; ValueError saying what is wrong with it."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("kind") != CACHE_KIND:
        raise ValueError(f"unknown kind {doc.get('kind')!r}")
    n = _field(doc, "network", dict)
    plugins = _field(n, "plugins", list)
    if not all(isinstance(p, dict) for p in plugins):
        raise ValueError("network.plugins: not a list of objects")
    version = _field(n, "cniVersion", str)
    network = NetworkConfig(
        name=_field(n, "name", str),
        cni_version=version,
        plugins=tuple(plugins),
        source=_field(n, "source", str, ""),
        disable_check=bool(n.get("disableCheck", False)),
        cni_versions=(version,),
    )
    return Attachment(
        sandbox_id=_field(doc, "sandboxId", str),
        netns=_field(doc, "netns", str, ""),
        network=network,
        cni_args=_field(doc, "cniArgs", str),
        runtime_config=_field(doc, "runtimeConfig", dict),
        if_name=_field(doc, "ifName", str, IFNAME),
        loopback_result=_field(doc, "loopbackResult", dict, None),
        result=_field(doc, "result", dict, None),
        complete=bool(doc.get("complete", False)),
    )


_REQUIRED: Any = object()


def _field(doc: Mapping[str, Any], key: str, kind: type, default: Any = _REQUIRED) -> Any:
    """``doc[key]`` checked to be a ``kind``; ``default`` when absent or null (if given)."""
    value = doc.get(key)
    if value is None and default is not _REQUIRED:
        return default
    if value is None:
        raise ValueError(f"missing {key!r}")
    if not isinstance(value, kind):
        raise ValueError(f"{key!r} is not a JSON {_JSON_NAMES[kind]}")
    return value


_JSON_NAMES: dict[type, str] = {str: "string", dict: "object", list: "array"}


def _opt_dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


class AttachmentCache:
    """The cache directory (created, mode 0700, on the first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, sandbox_id: str) -> Path:
        if not _ID_RE.match(sandbox_id):
            raise CNIError(f"invalid sandbox id {sandbox_id!r} for CNI")
        return self.directory / f"{sandbox_id}.json"

    async def save(self, entry: Attachment) -> None:
        path = self.path(entry.sandbox_id)
        data = encode(entry)

        def write() -> None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            files.write_atomic(path, data)

        await asyncio.to_thread(write)

    async def load(self, sandbox_id: str) -> Attachment | None:
        """The entry, None if there is none; CNIError if the file cannot be used."""
        path = self.path(sandbox_id)
        data = await asyncio.to_thread(files.read_if_exists, path)
        if data is None:
            return None
        try:
            return decode(data)
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError included
            raise CNIError(f"unreadable CNI cache {path}: {e}") from None

    async def drop(self, sandbox_id: str) -> None:
        path = self.path(sandbox_id)
        await asyncio.to_thread(lambda: path.unlink(missing_ok=True))

    def ids(self) -> list[str]:
        """Sandbox ids with an entry (attached, or a setup/teardown left unfinished)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))
