"""The image store behind the ImageService: real pulls, metadata, garbage collection.

An image becomes visible only when its record is committed, after every blob is verified
and every layer unpacked; a crash before that leaves unreferenced content, which the
startup garbage collection removes. Sizes for ImageFsInfo are kept as running counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cri_async.core.errors import (
    CRIError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from cri_async.core.images import AuthConfig, FilesystemUsage
from cri_async.core.model import Image, ImageSpec
from cri_async.metrics import NO_METRICS, Recorder
from cri_async.registry import layout
from cri_async.registry import manifest as mf
from cri_async.registry.auth import AuthError, Credentials, from_auth_config
from cri_async.registry.client import RegistryClient, RegistryError
from cri_async.registry.content import ContentStore, DigestMismatch
from cri_async.registry.pull import Progress, Pulled, Puller
from cri_async.registry.reference import Reference, ReferenceError, normalize, parse_image_id
from cri_async.registry.snapshots import LayerError, SnapshotInfo, SnapshotStore
from cri_async.store import serde
from cri_async.store.db import Delete, Op, Put, StateStore

log = logging.getLogger("cri_async.registry.store")

IMAGE_KIND = "image"
SNAPSHOT_KIND = "snapshot"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image: Image
    config_digest: str
    chain_ids: tuple[str, ...]
    blobs: tuple[str, ...]
    handlers: tuple[str, ...] = ()
    pulled_at: int = 0

    @property
    def visible(self) -> bool:
        return bool(self.image.repo_tags or self.image.repo_digests)


@dataclass
class Counters:
    bytes: int = 0
    inodes: int = 0


def _map_error(ref: str, e: Exception, verb: str = "pull") -> CRIError:
    msg = f"failed to {verb} {ref}: {e}"
    if isinstance(e, RegistryError):
        kind = {
            "not_found": NotFound,
            "permission_denied": PermissionDenied,
            "deadline": DeadlineExceeded,
        }.get(e.kind, Unavailable)
        return kind(msg)
    if isinstance(e, AuthError):
        return PermissionDenied(msg)
    if isinstance(e, mf.UnsupportedManifest):
        return FailedPrecondition(msg)
    if isinstance(e, DigestMismatch | mf.ManifestError | LayerError):
        return Internal(msg)
    return Internal(msg)


@dataclass
class OCIImageStore:
    store: StateStore
    root: Path
    client: RegistryClient
    platform: mf.Platform = field(default_factory=mf.host)
    pinned: Iterable[str] = ()
    handlers: Iterable[str] = ("",)
    max_downloads: int = 3
    in_use: Callable[[], set[str]] = set
    metrics: Recorder = NO_METRICS

    def __post_init__(self) -> None:
        self._records: dict[str, ImageRecord] = {}
        self._snaps: dict[str, SnapshotInfo] = {}
        self.content = ContentStore(self.root / "content")
        self.snapshots = SnapshotStore(self.root / "snapshots")
        self.puller = Puller(
            self.client,
            self.content,
            self.snapshots,
            known=self._snaps.get,
            max_downloads=self.max_downloads,
        )
        self._pinned = {str(normalize(p)) for p in self.pinned}
        self._handlers = set(self.handlers)
        self._pulls: dict[str, asyncio.Task[str]] = {}
        self._progress: dict[str, Progress] = {}
        self._lock = asyncio.Lock()  # metadata changes + GC, never held across a download
        self.counters = Counters()

    # -- startup -----------------------------------------------------------------------
    async def load(self) -> None:
        swept = await asyncio.to_thread(self.content.open)
        if swept:
            log.info("removed %d interrupted downloads", len(swept))
        await asyncio.to_thread(self.snapshots.open)
        self._records = {
            i: serde.loads(ImageRecord, d) for i, d in await self.store.load(IMAGE_KIND)
        }
        self._snaps.update(
            (i, serde.loads(SnapshotInfo, d)) for i, d in await self.store.load(SNAPSHOT_KIND)
        )
        await self.gc(sweep_orphans=True)
        self._recount()

    def _recount(self) -> None:
        blobs = {b for r in self._records.values() for b in r.blobs}
        size = 0
        for b in blobs:
            try:
                size += self.content.size(b)
            except FileNotFoundError:
                log.warning("blob %s of a stored image is missing", b)
        self.counters = Counters(
            size + sum(s.bytes for s in self._snaps.values()),
            len(blobs) + sum(s.inodes for s in self._snaps.values()),
        )

    # -- lookups -------------------------------------------------------------------------
    def _visible(self) -> list[ImageRecord]:
        return [r for r in self._records.values() if r.visible]

    def _find(self, text: str) -> ImageRecord | None:
        if not text:
            return None
        image_id = parse_image_id(text)
        if image_id is not None:
            rec = self._records.get(image_id)
            return rec if rec is not None and rec.visible else None
        if len(text) >= 3 and all(c in "0123456789abcdef" for c in text):
            hits = [r for r in self._visible() if r.image.id[7:].startswith(text)]
            if len(hits) == 1:
                return hits[0]
        try:
            ref = normalize(text)
        except ReferenceError:
            return None
        for r in self._visible():
            if ref.digest is not None:
                if f"{ref.name}@{ref.digest}" in r.image.repo_digests:
                    return r
            elif str(ref) in r.image.repo_tags:
                return r
        return None

    def get(self, spec: ImageSpec) -> Image | None:
        rec = self._find(spec.image)
        return rec.image if rec is not None else None

    def record(self, image_id: str) -> ImageRecord | None:
        return self._records.get(image_id)

    def list_images(self, spec: ImageSpec | None = None) -> list[Image]:
        if spec is not None and spec.image:
            img = self.get(spec)
            return [] if img is None else [img]
        return [r.image for r in self._visible()]

    # -- pull ----------------------------------------------------------------------------
    def progress(self, spec: ImageSpec) -> Progress | None:
        """Download progress of an in-flight pull of ``spec`` (any credentials)."""
        try:
            ref = str(normalize(spec.image))
        except ReferenceError:
            return None
        return next((p for k, p in self._progress.items() if k.split("|", 1)[0] == ref), None)

    async def pull(self, spec: ImageSpec, auth: AuthConfig | None) -> str:
        if not spec.image:
            raise InvalidArgument("image reference must not be empty")
        if spec.runtime_handler and spec.runtime_handler not in self._handlers:
            raise InvalidArgument(f"runtime handler {spec.runtime_handler!r} is not configured")
        try:
            ref = normalize(spec.image)
        except ReferenceError as e:
            raise InvalidArgument(str(e)) from None
        if not ref.domain:
            raise InvalidArgument(f"image reference {spec.image!r} has no usable registry host")
        try:
            creds = self.client.credentials_for(
                ref.domain, from_auth_config(auth) if auth is not None else None
            )
        except AuthError as e:
            raise InvalidArgument(f"pull credentials for {ref}: {e}") from None
        key = f"{ref}|{creds.identity}"
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.ensure_future(self._pull(key, ref, creds, spec.runtime_handler))
            self._pulls[key] = task
            t0 = time.monotonic()

            def done(t: asyncio.Task[str]) -> None:
                self._pulls.pop(key, None)
                p = self._progress.pop(key, None)
                ok = not t.cancelled() and t.exception() is None
                self.metrics.image_pull(
                    ok=ok, seconds=time.monotonic() - t0, size=p.done if p else 0
                )

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _pull(self, key: str, ref: Reference, creds: Credentials, handler: str) -> str:
        def watch(p: Progress) -> None:
            self._progress[key] = p

        try:
            pulled, new_snaps = await self.puller.pull(ref, creds, self.platform, watch=watch)
        except CRIError:
            raise
        except (RegistryError, AuthError, mf.ManifestError, DigestMismatch, LayerError) as e:
            raise _map_error(str(ref), e) from None
        async with self._lock:
            return await self._commit(ref, pulled, new_snaps, handler)

    async def _commit(
        self, ref: Reference, p: Pulled, new_snaps: list[SnapshotInfo], handler: str
    ) -> str:
        image_id = p.config_digest
        # Another pull may have committed the same layers since ours were unpacked.
        new_snaps = [s for s in new_snaps if s.chain_id not in self._snaps]
        tag = None if ref.digest else str(ref)
        digest_ref = f"{ref.name}@{p.manifest_digest}"
        ops: list[Op] = []
        changed: dict[str, ImageRecord] = {}
        if tag is not None:  # a tag moves: take it from whichever image held it
            for r in self._records.values():
                if r.image.id != image_id and tag in r.image.repo_tags:
                    tags = tuple(t for t in r.image.repo_tags if t != tag)
                    changed[r.image.id] = replace(r, image=replace(r.image, repo_tags=tags))
        cur = self._records.get(image_id)
        c = p.config
        uid, username = mf.user_fields(c.user)
        base = (
            cur.image
            if cur is not None
            else Image(
                id=image_id,
                size=p.size,
                uid=uid,
                username=username,
                entrypoint=c.entrypoint,
                cmd=c.cmd,
                env=c.env,
                working_dir=c.working_dir,
                stop_signal=c.stop_signal,
                user=c.user,
                annotations=dict(c.labels),
            )
        )
        tags = base.repo_tags + ((tag,) if tag and tag not in base.repo_tags else ())
        digests = base.repo_digests + ((digest_ref,) if digest_ref not in base.repo_digests else ())
        image = replace(
            base,
            repo_tags=tags,
            repo_digests=digests,
            pinned=any(t in self._pinned for t in tags),
        )
        blobs = tuple(dict.fromkeys((*(cur.blobs if cur else ()), *p.blobs)))
        handlers = tuple(sorted({*(cur.handlers if cur else ()), handler}))
        changed[image_id] = ImageRecord(
            image, image_id, p.chain_ids, blobs, handlers, time.time_ns()
        )
        ops += [Put(IMAGE_KIND, i, serde.dumps(r)) for i, r in changed.items()]
        ops += [Put(SNAPSHOT_KIND, s.chain_id, serde.dumps(s)) for s in new_snaps]
        await self.store.apply(ops)  # the image becomes visible here, atomically
        new_blobs = set(blobs) - {b for r in self._records.values() for b in r.blobs}
        self._records.update(changed)
        for s in new_snaps:
            self._snaps[s.chain_id] = s
            self.counters.bytes += s.bytes
            self.counters.inodes += s.inodes
        for b in new_blobs:
            self.counters.bytes += self.content.size(b)
            self.counters.inodes += 1
        if any(not r.visible for r in changed.values()):  # a moved tag may orphan an image
            await self._gc_locked()
        return image_id

    # -- import ----------------------------------------------------------------------------
    async def import_path(self, path: Path, name: str = "") -> list[tuple[str, str]]:
        """Load an OCI layout (dir or archive) or a ``docker save`` archive, verified like a
        pull. Returns (name, image id) per image. ``name`` names an image whose layout
        entry carries no full reference (or overrides it)."""
        try:
            src, entries, tmp = await asyncio.to_thread(layout.open_path, path)
        except layout.LayoutError as e:
            raise InvalidArgument(str(e)) from None
        puller = Puller(src, self.content, self.snapshots, known=self._snaps.get)
        out: list[tuple[str, str]] = []
        try:
            if not entries:
                raise InvalidArgument(f"{path}: the layout lists no images")
            for entry in entries:
                names = [name] if name else list(entry.names)
                refs = []
                for n in names:
                    try:
                        # OCI allows a bare tag here ("latest"); that names no image.
                        ok = "/" in n or ":" in n
                        refs += [normalize(n)] if ok else []
                    except ReferenceError:
                        ok = False
                    if not ok:
                        raise InvalidArgument(
                            f"{path}: image {entry.digest} is named {n!r}, not a full "
                            "reference; give one with --name"
                        ) from None
                if not refs:
                    raise InvalidArgument(
                        f"{path}: image {entry.digest} has no name; give one with --name"
                    )
                try:
                    pulled, snaps = await puller.pull(
                        refs[0], Credentials(), self.platform, entry.digest
                    )
                except CRIError:
                    raise
                except (RegistryError, mf.ManifestError, DigestMismatch, LayerError) as e:
                    raise _map_error(str(path), e, "import") from None
                async with self._lock:
                    for ref in refs:
                        image_id = await self._commit(ref, pulled, snaps, "")
                        out.append((str(ref), image_id))
        finally:
            if tmp is not None:
                await asyncio.to_thread(tmp.cleanup)
        return out

    # -- remove and garbage collection ----------------------------------------------------
    async def remove(self, spec: ImageSpec) -> None:
        async with self._lock:
            rec = self._find(spec.image)
            if rec is None:
                return
            if rec.image.pinned:
                raise FailedPrecondition(
                    f"image {spec.image!r} is pinned (images.pinned in the config)"
                )
            tag = None
            if parse_image_id(spec.image) is None:
                try:
                    ref = normalize(spec.image)
                    tag = (
                        str(ref) if ref.digest is None and str(ref) in rec.image.repo_tags else None
                    )
                except ReferenceError:
                    tag = None
            if tag is not None and len(rec.image.repo_tags) > 1:
                tags = tuple(t for t in rec.image.repo_tags if t != tag)
                new = replace(rec, image=replace(rec.image, repo_tags=tags))
            else:
                new = replace(rec, image=replace(rec.image, repo_tags=(), repo_digests=()))
            await self.store.put(IMAGE_KIND, new.image.id, serde.dumps(new))
            self._records[new.image.id] = new
            await self._gc_locked()

    async def gc(self, *, sweep_orphans: bool = False) -> None:
        async with self._lock:
            await self._gc_locked(sweep_orphans=sweep_orphans)

    async def _gc_locked(self, *, sweep_orphans: bool = False) -> None:
        """Drop hidden images no container uses, then the blobs and snapshots only they
        held. ``sweep_orphans`` (startup only, when no pull can be in flight) also removes
        content no record knows: what a failed or crashed pull left behind."""
        used = self.in_use()
        counted = {b for r in self._records.values() for b in r.blobs}
        ops: list[Op] = []
        for r in list(self._records.values()):
            if not r.visible and r.image.id not in used:
                ops.append(Delete(IMAGE_KIND, r.image.id))
                del self._records[r.image.id]
        keep_blobs = {b for r in self._records.values() for b in r.blobs}
        keep_snaps = {c for r in self._records.values() for c in r.chain_ids}
        dead_snaps = [s for s in self._snaps.values() if s.chain_id not in keep_snaps]
        ops += [Delete(SNAPSHOT_KIND, s.chain_id) for s in dead_snaps]
        if ops:
            await self.store.apply(ops)
        for s in dead_snaps:
            del self._snaps[s.chain_id]
            self.counters.bytes -= s.bytes
            self.counters.inodes -= s.inodes
            await self.snapshots.remove(s.chain_id)
        for b in counted - keep_blobs:
            self.counters.bytes -= await asyncio.to_thread(self.content.delete, b)
            self.counters.inodes -= 1
        if sweep_orphans:
            for d in await asyncio.to_thread(lambda: list(self.snapshots.root.iterdir())):
                if f"sha256:{d.name}" not in self._snaps:
                    await self.snapshots.remove(f"sha256:{d.name}")
            for b in await asyncio.to_thread(self.content.digests):
                if b not in keep_blobs:
                    await asyncio.to_thread(self.content.delete, b)

    def verbose_info(self, image: Image) -> dict[str, str]:
        """As containerd: the full image config (imageSpec) plus where it is stored."""
        rec = self._records.get(image.id)
        if rec is None:
            return {}
        try:
            spec = json.loads(self.content.read(rec.config_digest))
        except (OSError, ValueError):
            spec = None
        info = {
            "imageSpec": spec,
            "chainIDs": list(rec.chain_ids),
            "snapshots": [str(self.snapshots.path(c)) for c in rec.chain_ids],
            "runtimeHandlers": list(rec.handlers),
        }
        return {"info": json.dumps(info, sort_keys=True)}

    def fs_usage(self) -> list[FilesystemUsage]:
        return [
            FilesystemUsage(
                timestamp=time.time_ns(),
                mountpoint=str(self.root),
                used_bytes=max(self.counters.bytes, 0),
                inodes_used=max(self.counters.inodes, 0),
            )
        ]

    async def close(self) -> None:
        for t in list(self._pulls.values()):
            t.cancel()
        await self.client.aclose()
