"""Images from files instead of a registry: OCI image layouts and ``docker save`` archives.

``LayoutSource`` answers the same two calls the puller makes of a registry client
(fetch_manifest, fetch_blob), so an import goes through the very same verification,
unpacking and commit as a pull. A ``docker save`` archive is presented as an OCI layout
by synthesising one manifest per image (its layers are uncompressed tars).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async.registry import manifest as mf
from cri_async.registry.auth import Credentials
from cri_async.registry.client import Fetched, NotFoundError, RegistryError
from cri_async.registry.content import BlobWriter
from cri_async.registry.hosts import Endpoint
from cri_async.registry.limits import KEY_IMAGE_BYTES, LimitExceeded, human
from cri_async.registry.reference import Reference, ReferenceError, normalize

REF_NAME = "org.opencontainers.image.ref.name"
LOCAL_HOST = "import.local"


class LayoutError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    """One image in the layout: its manifest/index digest and the names it carries."""

    digest: str
    media_type: str
    names: tuple[str, ...]


class LayoutSource:
    """A directory with ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._extra: dict[str, bytes] = {}  # synthesised blobs (docker save manifests)

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algo / hexpart

    def blob_bytes(self, digest: str) -> bytes:
        if digest in self._extra:
            return self._extra[digest]
        try:
            return self._blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in {self.root}") from None

    def entries(self) -> list[Entry]:
        try:
            index = json.loads((self.root / "index.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LayoutError(f"{self.root}: not an OCI image layout: {e}") from None
        out = []
        for d in index.get("manifests", []):
            ann = d.get("annotations") or {}
            name = ann.get(REF_NAME) or ann.get("io.containerd.image.name")
            out.append(
                Entry(d["digest"], d.get("mediaType", mf.OCI_MANIFEST), (name,) if name else ())
            )
        return out

    async def fetch_manifest(
        self, host: str, repo: str, reference: str, creds: Credentials
    ) -> Fetched:
        data = self.blob_bytes(reference)
        return Fetched(Endpoint(f"file://{self.root}", host), data, "", "")

    async def fetch_blob(
        self,
        host: str,
        repo: str,
        desc: mf.Descriptor,
        writer: BlobWriter,
        creds: Credentials,
        progress: Callable[[int], None] | None = None,
        attempts: int = 1,
    ) -> None:
        if desc.digest in self._extra:
            await writer.write(self._extra[desc.digest])
            return
        try:
            f = await asyncio.to_thread(open, self._blob_path(desc.digest), "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, 1 << 20):
                    await writer.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            finally:
                f.close()
        except FileNotFoundError:
            raise NotFoundError(f"blob {desc.digest} is not in {self.root}") from None
        except OSError as e:
            raise RegistryError(f"reading blob {desc.digest}: {e}") from None

    async def aclose(self) -> None:
        return None

    def credentials_for(self, host: str, given: Credentials | None) -> Credentials:
        return Credentials()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def docker_save_to_layout(root: Path) -> tuple[LayoutSource, list[Entry]]:
    """Present an extracted ``docker save`` directory (``manifest.json``) as a layout."""
    try:
        items: Any = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LayoutError(f"{root}: not a docker save archive: {e}") from None
    src = LayoutSource(root)
    entries = []
    for item in items:
        config_path = root / item["Config"]
        config_digest = _sha256_file(config_path)
        layers = []
        for rel in item["Layers"]:
            p = root / rel
            digest = _sha256_file(p)
            layers.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest,
                    "size": p.stat().st_size,
                }
            )
            _link_blob(src, p, digest)
        _link_blob(src, config_path, config_digest)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mf.OCI_MANIFEST,
                "config": {
                    "mediaType": mf.OCI_CONFIG,
                    "digest": config_digest,
                    "size": config_path.stat().st_size,
                },
                "layers": layers,
            }
        ).encode()
        digest = mf.digest_of(manifest)
        src._extra[digest] = manifest
        entries.append(Entry(digest, mf.OCI_MANIFEST, tuple(item.get("RepoTags") or ())))
    return src, entries


def _link_blob(src: LayoutSource, path: Path, digest: str) -> None:
    dst = src._blob_path(digest)
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(path.resolve())


def _extract(path: Path, dest: str, max_bytes: int) -> None:
    """Unpack the archive at ``path`` into ``dest`` (tarfile's "data" filter: nothing outside
    it, no devices), refusing it once its files add up to more than ``max_bytes``."""
    total = 0
    with tarfile.open(path, "r|*") as tf:
        for member in tf:
            total += member.size if member.isreg() else 0
            if total > max_bytes:
                raise LimitExceeded(
                    f"{path} holds more than {human(max_bytes)}"
                    f" (the limit {KEY_IMAGE_BYTES} = {max_bytes})",
                    key=KEY_IMAGE_BYTES,
                )
            tf.extract(member, dest, filter="data")


def open_path(
    path: Path, max_bytes: int
) -> tuple[LayoutSource, list[Entry], tempfile.TemporaryDirectory[str] | None]:
    """An OCI layout dir or archive, or a docker save archive (tar, optionally gzipped). An
    archive is extracted to a temporary directory (the caller cleans it up), up to
    ``max_bytes`` of files."""
    tmp: tempfile.TemporaryDirectory[str] | None = None
    root = path
    if path.is_file():
        tmp = tempfile.TemporaryDirectory(prefix="cri-import-")
        try:
            _extract(path, tmp.name, max_bytes)
        except (tarfile.TarError, OSError, EOFError) as e:
            tmp.cleanup()
            raise LayoutError(f"{path}: cannot read archive: {e}") from None
        except BaseException:
            tmp.cleanup()
            raise
        root = Path(tmp.name)
    try:
        if (root / "index.json").exists():
            src = LayoutSource(root)
            return src, src.entries(), tmp
        if (root / "manifest.json").exists():
            src, entries = docker_save_to_layout(root)
            return src, entries, tmp
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    if tmp is not None:
        tmp.cleanup()
    raise LayoutError(
        f"{path}: neither an OCI image layout (index.json) nor a docker save "
        "archive (manifest.json)"
    )


def entry_refs(path: Path, entry: Entry) -> list[Reference]:
    """The references an image of the layout is named by. A name must be a reference
    (``name:tag``, ``host/name``...): OCI allows a bare tag ("latest") as a layout's ref
    name, and that names no image."""
    refs = []
    for n in entry.names:
        try:
            if "/" in n or ":" in n:
                refs.append(normalize(n))
                continue
        except ReferenceError:
            pass
        raise LayoutError(
            f"{path}: image {entry.digest} is named {n!r}, not a full reference;"
            " give one with --name"
        )
    if not refs:
        raise LayoutError(f"{path}: image {entry.digest} has no name; give one with --name")
    return refs


__all__ = ["LayoutError", "LayoutSource", "docker_save_to_layout", "entry_refs", "open_path"]
