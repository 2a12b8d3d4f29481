"""OCI/Docker manifests, indexes and image configs: parsing, validation, platform choice.

Pure: bytes in, frozen records out. Anything a registry sends is untrusted, so every
field used later (digests, sizes, media types) is checked here.
"""

from __future__ import annotations

import hashlib
import json
import platform as host_platform
import re
from dataclasses import dataclass, field
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, "*/*;q=0.1"])

# layer media type -> compression
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what distribution itself accepts
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$|^sha384:[a-f0-9]{96}$")


class ManifestError(ValueError):
    """The registry sent something we must not use; the message says what."""


class UnsupportedManifest(ManifestError):
    """A well-formed manifest of a kind we do not pull (Docker schema 1)."""


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify(data: bytes, digest: str, what: str) -> None:
    algo = digest.split(":", 1)[0]
    if algo not in ("sha256", "sha384", "sha512"):
        raise ManifestError(f"{what}: unsupported digest algorithm {algo!r}")
    got = digest_of(data, algo)
    if got != digest:
        raise ManifestError(f"{what}: digest mismatch: expected {digest}, got {got}")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not os/arch[/variant]")
        return cls(*parts)


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}


def host() -> Platform:
    machine = host_platform.machine()
    arch = _ARCH.get(machine, machine)
    variant = {"armv7l": "v7", "armv6l": "v6", "aarch64": "v8"}.get(machine, "")
    return Platform("linux", arch, "" if arch == "arm64" else variant)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()


def _descriptor(obj: Any, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: descriptor is not an object")
    digest = obj.get("digest")
    size = obj.get("size")
    mt = obj.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ManifestError(f"{what}: invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what}: invalid size {size!r}")
    if not isinstance(mt, str):
        raise ManifestError(f"{what}: invalid mediaType")
    plat = None
    p = obj.get("platform")
    if isinstance(p, dict):
        plat = Platform(
            str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", ""))
        )
    ann = obj.get("annotations") or {}
    return Descriptor(
        mt,
        digest,
        size,
        plat,
        {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
        tuple(str(u) for u in obj.get("urls") or ()),
    )


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what}: {len(data)} bytes is larger than {MAX_MANIFEST_BYTES}")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{what}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return obj


def detect_media_type(data: bytes, header_type: str) -> str:
    """The manifest's media type: its own field, else the Content-Type, else its shape."""
    obj = _load_json(data, "manifest")
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    base = header_type.split(";", 1)[0].strip()
    if base and base not in ("application/json", "text/plain", "application/octet-stream"):
        return base
    if obj.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in obj:
        return OCI_INDEX
    return OCI_MANIFEST


def parse(data: bytes, media_type: str) -> Index | Manifest:
    obj = _load_json(data, "manifest")
    if media_type in SCHEMA1_TYPES or obj.get("schemaVersion") == 1:
        raise UnsupportedManifest(
            "Docker image manifest schema 1 is not supported (deprecated since 2017); "
            "push the image again with a current client"
        )
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"manifest: unsupported schemaVersion {obj.get('schemaVersion')!r}")
    if media_type in INDEX_TYPES:
        items = obj.get("manifests")
        if not isinstance(items, list):
            raise ManifestError("index: 'manifests' is not a list")
        return Index(
            media_type, tuple(_descriptor(d, f"index.manifests[{i}]") for i, d in enumerate(items))
        )
    if media_type in MANIFEST_TYPES:
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest: 'layers' is not a list")
        descs = tuple(_descriptor(d, f"manifest.layers[{i}]") for i, d in enumerate(layers))
        for i, d in enumerate(descs):
            if d.media_type not in LAYER_TYPES:
                raise ManifestError(
                    f"manifest.layers[{i}]: unsupported layer media type {d.media_type!r}"
                )
        ann = obj.get("annotations") or {}
        return Manifest(
            media_type,
            _descriptor(obj.get("config"), "manifest.config"),
            descs,
            {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
        )
    raise ManifestError(f"unsupported manifest media type {media_type!r}")


def choose(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want``, as containerd's platform matcher picks it."""
    candidates = [
        d for d in index.manifests if d.media_type not in INDEX_TYPES or d.platform is None
    ]
    for d in candidates:
        p = d.platform
        if p is None or (p.os, p.architecture) != (want.os, want.architecture):
            continue
        if not want.variant or not p.variant or p.variant == want.variant:
            return d
    offered = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
    raise ManifestError(f"no image for platform {want} in the index (offered: {offered})")


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config the runtime uses."""

    os: str
    architecture: str
    diff_ids: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def _strs(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in v) if isinstance(v, list) else ()


def parse_config(data: bytes) -> ImageConfig:
    obj = _load_json(data, "image config")
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ManifestError("image config: rootfs.type must be 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and _DIGEST.match(d) for d in diff_ids
    ):
        raise ManifestError("image config: rootfs.diff_ids must be a list of digests")
    c = obj.get("config") or {}
    if not isinstance(c, dict):
        c = {}
    labels = c.get("Labels") or {}
    return ImageConfig(
        os=str(obj.get("os", "")),
        architecture=str(obj.get("architecture", "")),
        diff_ids=tuple(diff_ids),
        entrypoint=_strs(c.get("Entrypoint")),
        cmd=_strs(c.get("Cmd")),
        env=_strs(c.get("Env")),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        stop_signal=str(c.get("StopSignal") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def chain_ids(diff_ids: tuple[str, ...]) -> tuple[str, ...]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else digest_of(f"{out[-1]} {d}".encode()))
    return tuple(out)


def user_fields(user: str) -> tuple[int | None, str]:
    """An image config USER as CRI reports it: a numeric uid, or a user name (uid unset)."""
    name = user.split(":", 1)[0]
    if not name:
        return 0, ""
    return (int(name), "") if name.isdigit() else (None, name)
