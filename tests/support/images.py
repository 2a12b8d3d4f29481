"""Build OCI / Docker images from scratch and push them to a registry (tests only).

Layers are tar streams built from simple entry specs (:class:`File`, :class:`Dir`,
:class:`Symlink`, :class:`Hardlink`, :class:`Whiteout`, :class:`Opaque`, :class:`HostFile`,
:class:`Device`), compressed with gzip, zstd or nothing. :func:`build_image` makes the config
and an OCI (default) or Docker schema 2 manifest; :func:`build_index` an OCI index or Docker
manifest list. :func:`push` uploads with the plain registry API (HEAD to skip existing blobs,
monolithic POST+PUT uploads, manifests by tag or digest) and speaks Basic and the Docker token
flow.

Broken content for negative tests:

* a blob whose bytes don't match its digest: push normally, then
  ``LocalRegistry.corrupt_blob(digest)`` rewrites the stored file (the registry serves it as is);
* a manifest whose descriptors lie (wrong size, another existing blob's digest, a diff_id that
  doesn't match): :func:`tamper_manifest` / ``config_overrides=`` (distribution only checks that
  referenced blobs exist, not their sizes);
* schema 1: :func:`schema1_manifest` builds a *signed* ``v1+prettyjws`` manifest; distribution 2.8
  stores it only when started with ``LocalRegistry(schema1=True)``
  (``compatibility: schema1: enabled``); otherwise the PUT is refused. Note that the registry
  keeps only the canonical payload and re-signs it with its own key on GET, so the bytes served
  differ from those pushed; the digest (of the canonical payload) is the same. A registry also
  serves schema 1 by itself: GET a *Docker schema 2* manifest by tag with
  ``Accept: application/vnd.docker.distribution.manifest.v1+prettyjws`` only (or no Accept);
* hostile tar entries (``../``, absolute names, symlink/hardlink escapes): :func:`hostile_layer`,
  or :func:`raw_tar` for anything else.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import Message
from pathlib import Path
from typing import Any, Protocol

from tests.support.prereq import unavailable

# -- media types ---------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

OCI_LAYER_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
# Docker has no zstd type of its own: moby puts the OCI one in Docker manifests.
DOCKER_LAYER_TYPES = {"gzip": DOCKER_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": DOCKER_LAYER}

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact JSON; manifests are digested over exactly these bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# -- value objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    data: bytes = field(repr=False)

    @classmethod
    def of(cls, data: bytes, media_type: str = "application/octet-stream") -> Blob:
        return cls(sha256_digest(data), len(data), media_type, data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """An OCI descriptor; ``extra`` (e.g. ``annotations=``, ``urls=``) is added as is."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer(Blob):
    """A compressed layer blob plus what was compressed (``tar``) and its ``diff_id``."""

    diff_id: str = ""
    tar: bytes = field(default=b"", repr=False)
    compression: str = "gzip"

    def for_docker(self) -> Layer:
        """The same blob described with the Docker media type."""
        return replace(self, media_type=DOCKER_LAYER_TYPES[self.compression])

    def for_oci(self) -> Layer:
        return replace(self, media_type=OCI_LAYER_TYPES[self.compression])

    def members(self) -> list[tarfile.TarInfo]:
        """The tar entries, for assertions."""
        with tarfile.open(fileobj=io.BytesIO(self.tar), mode="r:") as tf:
            return tf.getmembers()


@dataclass(frozen=True)
class BuiltImage:
    config: dict[str, Any]
    config_blob: Blob
    layers: tuple[Layer, ...]
    manifest_bytes: bytes = field(repr=False)
    manifest_digest: str
    media_type: str
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        """What a runtime calls the image ID: the config digest."""
        return self.config_blob.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config_blob, *self.layers)

    @property
    def size(self) -> int:
        """Manifest + config + compressed layers, as a registry would count it."""
        return len(self.manifest_bytes) + sum(b.size for b in self.blobs)

    def descriptor(self, *, platform: bool = True, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.manifest_digest,
            "size": len(self.manifest_bytes),
        }
        if platform and self.platform:
            d["platform"] = dict(self.platform)
        d.update(extra)
        return d


@dataclass(frozen=True)
class BuiltIndex:
    images: tuple[BuiltImage, ...]
    manifest_bytes: bytes = field(repr=False)
    manifest_digest: str
    media_type: str
    index: dict[str, Any] = field(default_factory=dict, repr=False)

    def for_platform(self, platform: str) -> BuiltImage:
        want = parse_platform(platform)
        for img in self.images:
            if img.platform == want:
                return img
        raise KeyError(platform)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        seen: dict[str, Blob] = {}
        for img in self.images:
            for b in img.blobs:
                seen.setdefault(b.digest, b)
        return tuple(seen.values())


@dataclass(frozen=True)
class Schema1Manifest:
    """A signed schema 1 manifest; ``manifest_digest`` is that of ``canonical`` (the payload
    without signatures), which is what registries name it by."""

    manifest_bytes: bytes = field(repr=False)
    canonical: bytes = field(repr=False)
    manifest_digest: str
    layers: tuple[Layer, ...]
    media_type: str = DOCKER_SCHEMA1_SIGNED

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return self.layers


# -- layer entries -------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 0


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    uid: int = 0
    gid: int = 0
    mtime: int = 0


@dataclass(frozen=True)
class Hardlink:
    """A hard link to ``target``, a path inside the layer (written before this entry)."""

    path: str
    target: str
    mtime: int = 0


@dataclass(frozen=True)
class Whiteout:
    """Deletes ``path`` from lower layers: an empty ``dirname/.wh.basename``."""

    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides everything lower layers have in directory ``path``: ``path/.wh..wh..opq``."""

    path: str


@dataclass(frozen=True)
class HostFile:
    """A file copied from the host; ``mode`` defaults to the host file's permission bits."""

    path: str
    source: str | os.PathLike[str]
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = 0


@dataclass(frozen=True)
class Device:
    """A character (``"chr"``) or block (``"blk"``) device, or a ``"fifo"``."""

    path: str
    kind: str = "chr"
    major: int = 0
    minor: int = 0
    mode: int = 0o666
    mtime: int = 0


Entry = File | Dir | Symlink | Hardlink | Whiteout | Opaque | HostFile | Device


def _norm(path: str) -> str:
    p = path.strip()
    while p.startswith("./"):
        p = p[2:]
    p = p.strip("/")
    if not p or any(part in ("", ".", "..") for part in p.split("/")):
        raise ValueError(f"bad layer path {path!r} (use raw_tar() for hostile names)")
    return p


def _info(name: str, type_: bytes, *, mode: int, uid: int = 0, gid: int = 0, mtime: int = 0):  # type: ignore[no-untyped-def]
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    return ti


def _entry_members(e: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    if isinstance(e, File):
        ti = _info(_norm(e.path), tarfile.REGTYPE, mode=e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime)
        ti.size = len(e.data)
        if e.xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
        return ti, e.data
    if isinstance(e, HostFile):
        src = Path(e.source)
        data = src.read_bytes()
        mode = e.mode if e.mode is not None else stat.S_IMODE(src.stat().st_mode)
        ti = _info(_norm(e.path), tarfile.REGTYPE, mode=mode, uid=e.uid, gid=e.gid, mtime=e.mtime)
        ti.size = len(data)
        return ti, data
    if isinstance(e, Dir):
        ti = _info(_norm(e.path) + "/", tarfile.DIRTYPE, mode=e.mode, uid=e.uid, gid=e.gid)
        ti.mtime = e.mtime
        return ti, None
    if isinstance(e, Symlink):
        ti = _info(_norm(e.path), tarfile.SYMTYPE, mode=0o777, uid=e.uid, gid=e.gid, mtime=e.mtime)
        ti.linkname = e.target
        return ti, None
    if isinstance(e, Hardlink):
        ti = _info(_norm(e.path), tarfile.LNKTYPE, mode=0o644, mtime=e.mtime)
        ti.linkname = _norm(e.target)
        return ti, None
    if isinstance(e, Whiteout):
        p = _norm(e.path)
        head, _, base = p.rpartition("/")
        name = f"{head}/.wh.{base}" if head else f".wh.{base}"
        return _info(name, tarfile.REGTYPE, mode=0o600), b""
    if isinstance(e, Opaque):
        return _info(_norm(e.path) + "/.wh..wh..opq", tarfile.REGTYPE, mode=0o600), b""
    if isinstance(e, Device):
        kinds = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
        ti = _info(_norm(e.path), kinds[e.kind], mode=e.mode, mtime=e.mtime)
        ti.devmajor, ti.devminor = e.major, e.minor
        return ti, None
    raise TypeError(f"not a layer entry: {e!r}")


def raw_tar(
    members: Iterable[tuple[tarfile.TarInfo, bytes | None]], *, format: int = tarfile.PAX_FORMAT
) -> bytes:
    """A tar of exactly these members, names untouched (``../x``, ``/abs`` and all)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def build_tar(entries: Iterable[Entry], *, parents: bool = True) -> bytes:
    """A deterministic tar of ``entries`` in order. With ``parents``, directories that no
    entry declares are added (0755, root) before their first child."""
    entries = list(entries)
    members = [_entry_members(e) for e in entries]
    declared = {ti.name.rstrip("/") for ti, _ in members if ti.type == tarfile.DIRTYPE}
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    seen: set[str] = set()
    for ti, data in members:
        name = ti.name.rstrip("/")
        if parents:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in seen and d not in declared:
                    seen.add(d)
                    out.append((_info(d + "/", tarfile.DIRTYPE, mode=0o755), None))
        seen.add(name)
        out.append((ti, data))
    return raw_tar(out)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r} (gzip, zstd, none)")


def decompress(data: bytes, media_type: str) -> bytes:
    """The tar inside a layer blob, by media type (for assertions)."""
    if media_type.endswith("gzip"):
        return gzip.decompress(data)
    if media_type.endswith("zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def layer(
    entries: Iterable[Entry] | bytes,
    *,
    compression: str = "gzip",
    docker: bool = False,
    media_type: str | None = None,
    parents: bool = True,
) -> Layer:
    """A layer from entries (or a ready tar, e.g. from :func:`raw_tar`)."""
    tar = entries if isinstance(entries, bytes) else build_tar(entries, parents=parents)
    data = compress(tar, compression)
    mt = media_type or (DOCKER_LAYER_TYPES if docker else OCI_LAYER_TYPES)[compression]
    return Layer(
        digest=sha256_digest(data),
        size=len(data),
        media_type=mt,
        data=data,
        diff_id=sha256_digest(tar),
        tar=tar,
        compression=compression,
    )


# -- busybox -------------------------------------------------------------------------------

BUSYBOX = "/bin/busybox"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"


@functools.cache
def busybox_applets(busybox: str = BUSYBOX) -> tuple[str, ...]:
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout
    return tuple(a for a in out.split() if a and "/" not in a and a != "busybox")


def busybox_entries(busybox: str = BUSYBOX, applets: Sequence[str] | None = None) -> list[Entry]:
    """A minimal runnable rootfs: FHS dirs, ``bin/busybox`` (static) and a symlink per applet,
    ``etc/passwd`` and ``etc/group`` (root, daemon, nobody)."""
    entries: list[Entry] = [
        Dir("bin"),
        Dir("dev"),
        Dir("etc"),
        Dir("home"),
        Dir("proc", 0o555),
        Dir("root", 0o700),
        Dir("sys", 0o555),
        Dir("tmp", 0o1777),
        Dir("usr"),
        Dir("usr/bin"),
        Dir("var"),
        Dir("var/tmp", 0o1777),
        HostFile("bin/busybox", busybox, mode=0o755),
        File("etc/passwd", PASSWD.encode()),
        File("etc/group", GROUP.encode()),
    ]
    for name in applets if applets is not None else busybox_applets(busybox):
        entries.append(Symlink(f"bin/{name}", "busybox"))
    return entries


@functools.cache
def _busybox_layer(
    compression: str, docker: bool, busybox: str, applets: tuple[str, ...] | None
) -> Layer:
    return layer(busybox_entries(busybox, applets), compression=compression, docker=docker)


def busybox_layer(
    *,
    compression: str = "gzip",
    docker: bool = False,
    busybox: str = BUSYBOX,
    applets: Sequence[str] | None = None,
) -> Layer:
    """A runnable rootfs layer around the host's static busybox (cached per process)."""
    if not Path(busybox).exists():
        unavailable(f"{busybox} not found: apt-get install busybox-static")
    return _busybox_layer(compression, docker, busybox, tuple(applets) if applets else None)


def busybox_image(
    *extra_layers: Layer,
    cmd: Sequence[str] | None = ("sh",),
    compression: str = "gzip",
    docker: bool = False,
    **kw: Any,
) -> BuiltImage:
    """busybox rootfs (+ ``extra_layers``) as an image; ``kw`` goes to :func:`build_image`."""
    base = busybox_layer(compression=compression, docker=docker)
    return build_image([base, *extra_layers], cmd=cmd, docker=docker, **kw)


# -- config, manifests, index --------------------------------------------------------------


def parse_platform(platform: str | Mapping[str, str]) -> dict[str, str]:
    """``"linux/arm/v7"`` -> ``{"architecture": "arm", "os": "linux", "variant": "v7"}``."""
    if isinstance(platform, Mapping):
        return dict(platform)
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform {platform!r}: want os/arch[/variant]")
    out = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def image_config(
    diff_ids: Sequence[str],
    *,
    platform: str | Mapping[str, str] = "linux/amd64",
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = (DEFAULT_PATH_ENV,),
    working_dir: str | None = None,
    user: str | None = None,
    stop_signal: str | None = None,
    labels: Mapping[str, str] | None = None,
    exposed_ports: Iterable[str] | None = None,
    volumes: Iterable[str] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    created: str = EPOCH,
) -> dict[str, Any]:
    """An OCI image config (also valid as a Docker one). None leaves a field out."""
    plat = parse_platform(platform)
    cfg: dict[str, Any] = {}
    if env is not None:
        cfg["Env"] = list(env)
    if entrypoint is not None:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        cfg["Cmd"] = list(cmd)
    if working_dir is not None:
        cfg["WorkingDir"] = working_dir
    if user is not None:
        cfg["User"] = user
    if stop_signal is not None:
        cfg["StopSignal"] = stop_signal
    if labels is not None:
        cfg["Labels"] = dict(labels)
    if exposed_ports is not None:
        cfg["ExposedPorts"] = {p: {} for p in exposed_ports}
    if volumes is not None:
        cfg["Volumes"] = {v: {} for v in volumes}
    out: dict[str, Any] = {"created": created, "architecture": plat["architecture"]}
    out["os"] = plat["os"]
    for k in ("variant", "os.version"):
        if k in plat:
            out[k] = plat[k]
    out["config"] = cfg
    out["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    out["history"] = (
        [dict(h) for h in history]
        if history is not None
        else [
            {"created": created, "created_by": f"cri-async tests: layer {i}"}
            for i in range(len(diff_ids))
        ]
    )
    return out


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def build_image(
    layers: Sequence[Layer],
    *,
    platform: str | Mapping[str, str] = "linux/amd64",
    docker: bool = False,
    annotations: Mapping[str, str] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    **config_kw: Any,
) -> BuiltImage:
    """Config + manifest for ``layers``. ``docker=True``: Docker schema 2 manifest, Docker
    media types for config and layers. ``config_kw`` goes to :func:`image_config`;
    ``config_overrides`` is merged into the config dict last (e.g. ``{"rootfs": {"diff_ids":
    [...]}}`` for a config that lies about its layers)."""
    plat = parse_platform(platform)
    if docker:
        layers = [
            lay.for_docker() if lay.media_type in OCI_LAYER_TYPES.values() else lay
            for lay in layers
        ]
    config = image_config([lay.diff_id for lay in layers], platform=plat, **config_kw)
    if config_overrides:
        _merge(config, copy.deepcopy(dict(config_overrides)))
    config_blob = Blob.of(canonical_json(config), DOCKER_CONFIG if docker else OCI_CONFIG)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config_blob.descriptor(),
        "layers": [lay.descriptor() for lay in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    data = canonical_json(manifest)
    return BuiltImage(
        config=config,
        config_blob=config_blob,
        layers=tuple(layers),
        manifest_bytes=data,
        manifest_digest=sha256_digest(data),
        media_type=media_type,
        manifest=manifest,
        platform=plat,
    )


def tamper_manifest(image: BuiltImage, mutate: Callable[[dict[str, Any]], None]) -> BuiltImage:
    """``image`` with a manifest edited by ``mutate`` (on a deep copy), re-serialized and
    re-digested; config and layers are kept. E.g. a wrong layer size::

        tamper_manifest(img, lambda m: m["layers"][0].update(size=1))
    """
    manifest = copy.deepcopy(image.manifest)
    mutate(manifest)
    data = canonical_json(manifest)
    return replace(
        image,
        manifest=manifest,
        manifest_bytes=data,
        manifest_digest=sha256_digest(data),
        media_type=manifest.get("mediaType", image.media_type),
    )


def build_index(
    images: Sequence[BuiltImage],
    *,
    docker: bool = False,
    annotations: Mapping[str, str] | None = None,
    manifest_annotations: Sequence[Mapping[str, str] | None] | None = None,
) -> BuiltIndex:
    """An OCI index (or, ``docker=True``, a Docker manifest list) of ``images``, each entry
    carrying its image's platform (and ``manifest_annotations[i]`` if given)."""
    media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    entries = []
    for i, img in enumerate(images):
        extra: dict[str, Any] = {}
        if manifest_annotations and manifest_annotations[i]:
            extra["annotations"] = dict(manifest_annotations[i] or {})
        entries.append(img.descriptor(**extra))
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    if annotations:
        index["annotations"] = dict(annotations)
    data = canonical_json(index)
    return BuiltIndex(
        images=tuple(images),
        manifest_bytes=data,
        manifest_digest=sha256_digest(data),
        media_type=media_type,
        index=index,
    )


def multiarch(
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64", "linux/arm/v7"),
    *,
    docker: bool = False,
    layers: Sequence[Layer] | None = None,
    **kw: Any,
) -> BuiltIndex:
    """An index over one image per platform. Every image gets its own config (so its own
    digest) and, by default, a small layer naming its platform (nothing is runnable except
    on the host's own architecture, and only if you pass runnable ``layers``)."""
    images = []
    for p in platforms:
        lays = (
            list(layers)
            if layers is not None
            else [layer([File("etc/platform", p.encode() + b"\n")], docker=docker)]
        )
        images.append(build_image(lays, platform=p, docker=docker, **kw))
    return build_index(images, docker=docker)


# -- schema 1 ------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def schema1_manifest(
    name: str,
    tag: str,
    layers: Sequence[Layer],
    *,
    architecture: str = "amd64",
    config: Mapping[str, Any] | None = None,
) -> Schema1Manifest:
    """A libtrust-signed (RS256, JWK header) schema 1 manifest over ``layers`` (bottom first,
    as elsewhere; schema 1 lists them top first). Push it with :func:`push` to a
    ``LocalRegistry(schema1=True)``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from tests.support.tokenserver import _shared_key

    ids: list[str] = []
    parent = ""
    for lay in layers:
        ids.append(hashlib.sha256((parent + lay.digest).encode()).hexdigest())
        parent = ids[-1]
    history = []
    for i in range(len(layers)):
        v1: dict[str, Any] = {"id": ids[i], "created": EPOCH}
        if i:
            v1["parent"] = ids[i - 1]
        if i == len(layers) - 1:
            v1.update({"architecture": architecture, "os": "linux"})
            v1["config"] = dict(config or {"Env": [DEFAULT_PATH_ENV], "Cmd": ["sh"]})
        else:
            v1["container_config"] = {"Cmd": [f"layer {i}"]}
        history.append({"v1Compatibility": json.dumps(v1, separators=(",", ":"))})
    payload_obj = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": architecture,
        "fsLayers": [{"blobSum": lay.digest} for lay in reversed(layers)],
        "history": list(reversed(history)),
    }
    payload = json.dumps(payload_obj, indent=3).encode()
    assert payload.endswith(b"\n}")
    format_length = len(payload) - 2
    tail = payload[format_length:]
    protected = _b64url(
        canonical_json(
            {
                "formatLength": format_length,
                "formatTail": _b64url(tail),
                "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    key = _shared_key()
    sig = key.sign(
        (protected + "." + _b64url(payload)).encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    pub = key.public_key().public_numbers()
    n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
    e = pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")
    signatures = [
        {
            "header": {"jwk": {"kty": "RSA", "n": _b64url(n), "e": _b64url(e)}, "alg": "RS256"},
            "signature": _b64url(sig),
            "protected": protected,
        }
    ]
    sig_json = json.dumps(signatures, indent=3).replace("\n", "\n   ")
    signed = payload[:format_length] + b',\n   "signatures": ' + sig_json.encode() + b"\n}"
    return Schema1Manifest(
        manifest_bytes=signed,
        canonical=payload,
        manifest_digest=sha256_digest(payload),
        layers=tuple(layers),
    )


# -- hostile layers ------------------------------------------------------------------------

HOSTILE_KINDS = (
    "dotdot",
    "nested-dotdot",
    "absolute",
    "symlink-escape",
    "absolute-symlink",
    "hardlink-escape",
    "hardlink-absolute",
)


def hostile_members(
    kind: str, name: str = "cri-async-evil"
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Tar members for one attack, all aimed at writing ``name`` outside the rootfs:

    ``dotdot`` ``../NAME``; ``nested-dotdot`` ``a/../../NAME``; ``absolute`` ``/tmp/NAME``;
    ``symlink-escape`` ``esc -> ../../../../../../tmp`` then file ``esc/NAME``;
    ``absolute-symlink`` ``abs -> /tmp`` then ``abs/NAME``; ``hardlink-escape`` hard link
    ``hl -> ../../../../etc/passwd``; ``hardlink-absolute`` ``hl -> /etc/passwd``.
    """

    def f(path: str) -> tuple[tarfile.TarInfo, bytes]:
        return _info(path, tarfile.REGTYPE, mode=0o644), b"pwned\n"

    def ln(path: str, target: str, type_: bytes) -> tuple[tarfile.TarInfo, None]:
        ti = _info(path, type_, mode=0o777)
        ti.linkname = target
        return ti, None

    table: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
        "dotdot": [f(f"../{name}")],
        "nested-dotdot": [(_info("a/", tarfile.DIRTYPE, mode=0o755), None), f(f"a/../../{name}")],
        "absolute": [f(f"/tmp/{name}")],
        "symlink-escape": [ln("esc", "../../../../../../tmp", tarfile.SYMTYPE), f(f"esc/{name}")],
        "absolute-symlink": [ln("abs", "/tmp", tarfile.SYMTYPE), f(f"abs/{name}")],
        "hardlink-escape": [ln("hl", "../../../../etc/passwd", tarfile.LNKTYPE)],
        "hardlink-absolute": [ln("hl", "/etc/passwd", tarfile.LNKTYPE)],
    }
    if kind not in table:
        raise ValueError(f"unknown hostile kind {kind!r}; one of {HOSTILE_KINDS}")
    return table[kind]


def hostile_layer(*kinds: str, compression: str = "gzip", name: str = "cri-async-evil") -> Layer:
    """A layer holding the given attacks (default: all of :data:`HOSTILE_KINDS`), after a
    harmless ``ok`` file."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("ok", tarfile.REGTYPE, mode=0o644), b"fine\n")
    ]
    for kind in kinds or HOSTILE_KINDS:
        members.extend(hostile_members(kind, name))
    return layer(raw_tar(members), compression=compression)


# -- pushing -------------------------------------------------------------------------------


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class RegistryError(Exception):
    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url}: HTTP {status}: {body[:500]!r}")
        self.method, self.url, self.status, self.body = method, url, status, body


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Response:
    """One HTTP request without proxies; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.headers, e.read())


class RegistryClient:
    """A minimal sync registry client: Basic and Docker-token auth, uploads, manifest GETs.

    ``auth``: (user, password) sent to a Basic registry or to the token realm (anonymous
    tokens otherwise). Tokens are cached per scope; :attr:`log` records (method, url, status).
    """

    def __init__(
        self, registry: str | HasUrl, auth: tuple[str, str] | None = None, timeout: float = 30
    ) -> None:
        self.base = (registry if isinstance(registry, str) else registry.url).rstrip("/")
        if "://" not in self.base:
            self.base = "http://" + self.base
        self.auth = auth
        self.timeout = timeout
        self.tokens: dict[str, str] = {}
        self.log: list[tuple[str, str, int]] = []
        self._basic = False

    def _basic_header(self) -> str:
        assert self.auth is not None
        return "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()

    def _token(self, challenge: str, scope: str | None) -> str:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise RegistryError("GET", "<token realm>", 401, challenge.encode())
        scope = scope or params.get("scope")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": self._basic_header()} if self.auth else {}
        r = http("GET", url, headers=headers, timeout=self.timeout)
        self.log.append(("GET", url, r.status))
        if r.status != 200:
            raise RegistryError("GET", url, r.status, r.body)
        body = r.json()
        token = body.get("token") or body.get("access_token")
        self.tokens[scope or ""] = token
        return str(token)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        repo: str | None = None,
        actions: str = "pull",
        ok: Iterable[int] = (200, 201, 202, 204),
    ) -> Response:
        """Request with auth; raise :class:`RegistryError` unless the status is in ``ok``."""
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        scope = f"repository:{repo}:{actions}" if repo else None
        hdrs = dict(headers or {})
        for attempt in range(2):
            if self._basic and self.auth:
                hdrs["Authorization"] = self._basic_header()
            elif scope and scope in self.tokens:
                hdrs["Authorization"] = "Bearer " + self.tokens[scope]
            r = http(method, url, data=data, headers=hdrs, timeout=self.timeout)
            self.log.append((method, url, r.status))
            if r.status != 401 or attempt:
                break
            challenge = r.headers.get("WWW-Authenticate", "")
            scheme = challenge.split(" ", 1)[0].lower()
            if scheme == "basic" and self.auth:
                self._basic = True
            elif scheme == "bearer":
                hdrs["Authorization"] = "Bearer " + self._token(challenge, scope)
                if scope is None:
                    self.tokens.pop("", None)
            else:
                break
        if r.status not in set(ok):
            raise RegistryError(method, url, r.status, r.body)
        return r

    # -- reads -----------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo, ok=(200, 404))
        return r.status == 200

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo).body

    def get_manifest(
        self, repo: str, ref: str, accept: Iterable[str] = ALL_MANIFEST_TYPES
    ) -> Response:
        return self.request(
            "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(accept)}, repo=repo
        )

    def tags(self, repo: str) -> list[str]:
        return list(self.request("GET", f"/v2/{repo}/tags/list", repo=repo).json()["tags"] or [])

    # -- writes ----------------------------------------------------------------------------

    def push_blob(self, repo: str, blob: Blob) -> bool:
        """Monolithic upload unless the blob is there; True if uploaded."""
        if self.blob_exists(repo, blob.digest):
            return False
        r = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            data=b"",
            headers={"Content-Length": "0"},
            repo=repo,
            actions="pull,push",
        )
        location = urllib.parse.urljoin(self.base + "/", r.headers["Location"])
        sep = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(blob.digest)}",
            data=blob.data,
            headers={"Content-Type": "application/octet-stream"},
            repo=repo,
            actions="pull,push",
            ok=(201,),
        )
        return True

    def push_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest; returns the registry's ``Docker-Content-Digest``."""
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            data=data,
            headers={"Content-Type": media_type},
            repo=repo,
            actions="pull,push",
            ok=(201,),
        )
        return str(r.headers.get("Docker-Content-Digest") or sha256_digest(data))

    def delete_manifest(self, repo: str, digest: str) -> None:
        self.request(
            "DELETE", f"/v2/{repo}/manifests/{digest}", repo=repo, actions="delete", ok=(202,)
        )

    def push(
        self,
        repo: str,
        image: BuiltImage | BuiltIndex | Schema1Manifest,
        tag: str | None = "latest",
    ) -> str:
        """Push blobs, child manifests (by digest) and the manifest (by ``tag``, or by digest
        if ``tag`` is None); returns the manifest digest (checked against the registry's)."""
        for blob in image.blobs:
            self.push_blob(repo, blob)
        if isinstance(image, BuiltIndex):
            for child in image.images:
                self._put(
                    repo,
                    child.manifest_digest,
                    child.manifest_bytes,
                    child.media_type,
                    child.manifest_digest,
                )
        return self._put(
            repo,
            tag or image.manifest_digest,
            image.manifest_bytes,
            image.media_type,
            image.manifest_digest,
        )

    def _put(self, repo: str, ref: str, data: bytes, media_type: str, expect: str) -> str:
        got = self.push_manifest(repo, ref, data, media_type)
        if got != expect:
            raise AssertionError(f"registry digests the manifest as {got}, we as {expect}")
        return got


def push(
    registry: str | HasUrl,
    repo: str,
    image: BuiltImage | BuiltIndex | Schema1Manifest,
    tag: str | None = "latest",
    auth: tuple[str, str] | None = None,
) -> str:
    """Push ``image`` to ``repo`` on ``registry`` (a URL or anything with ``.url``); returns
    the manifest digest. See :meth:`RegistryClient.push`."""
    return RegistryClient(registry, auth).push(repo, image, tag)
