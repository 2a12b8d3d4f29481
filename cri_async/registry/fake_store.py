"""An in-memory image store for the fake backend, fed from a seeded catalog.

The catalog plays the registry: pulling a reference it lists makes that image local;
pulling anything else fails as a registry would ("not found"). Local images are persisted
in the state database, so they survive a restart like real ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cri_async.core import serde
from cri_async.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from cri_async.core.images import AuthConfig, FilesystemUsage, PullProgress
from cri_async.core.model import Image, ImageSpec
from cri_async.core.ports import StateStore
from cri_async.registry.manifest import user_fields
from cri_async.registry.records import resolve
from cri_async.registry.reference import Reference, ReferenceError, normalize


@dataclass(frozen=True, slots=True)
class CatalogImage:
    """A seeded image: what the fake "registry" serves for ``ref``."""

    ref: str
    size: int = 1 << 20
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("sh",)
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(f"fake-config:{normalize(self.ref)}".encode()).hexdigest()

    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(f"fake-manifest:{self.image_id()}".encode()).hexdigest()


def _ref(text: str) -> Reference:
    try:
        return normalize(text)
    except ReferenceError as e:
        raise InvalidArgument(str(e)) from None


class FakeImageStore:
    kind = "image"

    def __init__(
        self,
        store: StateStore,
        catalog: Iterable[CatalogImage],
        pinned: Iterable[str] = (),
        mountpoint: str = "/",
        busy: Callable[[], set[str]] = set,
    ) -> None:
        self._store = store
        self._catalog = {str(_ref(c.ref)): c for c in catalog}
        self._pinned = {str(_ref(p)) for p in pinned}
        self._mountpoint = mountpoint
        self._busy = busy  # images of created or running containers
        self._images: dict[str, Image] = {}

    async def load(self) -> None:
        self._images = {i: serde.loads(Image, d) for i, d in await self._store.load(self.kind)}

    def _lookup_catalog(self, ref: Reference) -> CatalogImage | None:
        if ref.digest is None:
            return self._catalog.get(str(ref))
        for c in self._catalog.values():
            if c.manifest_digest() == ref.digest and _ref(c.ref).name == ref.name:
                return c
        return None

    async def pull(self, spec: ImageSpec, auth: AuthConfig | None) -> str:
        if not spec.image:
            raise InvalidArgument("image reference must not be empty")
        ref = _ref(spec.image)
        item = self._lookup_catalog(ref)
        if item is None:
            raise NotFound(f"failed to pull {spec.image!r}: {ref} not found in the fake registry")
        image_id = item.image_id()
        src = _ref(item.ref)
        tag = str(src)
        digest = f"{src.name}@{item.manifest_digest()}"
        cur = self._images.get(image_id)
        uid, username = user_fields(item.user)
        if cur is None:
            cur = Image(
                id=image_id,
                size=item.size,
                uid=uid,
                username=username,
                entrypoint=item.entrypoint,
                cmd=item.cmd,
                env=item.env,
                working_dir=item.working_dir,
                stop_signal=item.stop_signal,
                user=item.user,
            )
        tags = cur.repo_tags if (ref.digest or tag in cur.repo_tags) else (*cur.repo_tags, tag)
        digests = cur.repo_digests if digest in cur.repo_digests else (*cur.repo_digests, digest)
        new = replace(
            cur,
            repo_tags=tags,
            repo_digests=digests,
            pinned=any(t in self._pinned for t in tags),
        )
        await self._store.put(self.kind, image_id, serde.dumps(new))
        self._images[image_id] = new
        return image_id

    def get(self, spec: ImageSpec) -> Image | None:
        return resolve(self._images.values(), spec.image)

    def list_images(self, spec: ImageSpec | None = None) -> list[Image]:
        if spec is not None and spec.image:
            img = self.get(spec)
            return [] if img is None else [img]
        return list(self._images.values())

    async def remove(self, spec: ImageSpec) -> None:
        """As the registry store: the whole image the name resolves to, every tag and
        digest, unless it is pinned or a created or running container uses it."""
        img = self.get(spec)
        if img is None:
            return
        if img.pinned:
            raise FailedPrecondition(
                f"image {spec.image!r} is pinned (images.pinned in the config)"
            )
        if img.id in self._busy():
            raise FailedPrecondition(
                f"image {spec.image!r} ({img.id}) is used by a created or running container;"
                " remove the container first"
            )
        await self._store.delete(self.kind, [img.id])
        self._images.pop(img.id, None)

    def verbose_info(self, image: Image) -> dict[str, str]:
        config = {
            "Entrypoint": list(image.entrypoint),
            "Cmd": list(image.cmd),
            "Env": list(image.env),
            "WorkingDir": image.working_dir,
            "User": image.user,
            "StopSignal": image.stop_signal,
        }
        return {"info": json.dumps({"imageSpec": {"config": config}}, sort_keys=True)}

    def progress(self, spec: ImageSpec) -> PullProgress | None:
        return None  # fake pulls complete at once

    async def import_path(self, path: Path, name: str = "") -> list[tuple[str, str]]:
        raise Unimplemented("images.backend = 'fake' serves its catalog only; nothing to import")

    async def close(self) -> None:
        return None

    def fs_usage(self) -> list[FilesystemUsage]:
        return [
            FilesystemUsage(
                timestamp=time.time_ns(),
                mountpoint=self._mountpoint,
                used_bytes=sum(i.size for i in self._images.values()),
                inodes_used=len(self._images),
            )
        ]
