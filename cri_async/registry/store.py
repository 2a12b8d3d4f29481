"""The image store behind the ImageService: real pulls, metadata, garbage collection.

A pull or an import either commits complete images or nothing: the records are written in
one transaction, after every blob is verified, every layer unpacked (within the limits of
``registry.limits``) and every snapshot they need checked to be there. A failed pull removes
what it added that no image and no other pull in flight needs (blobs, snapshots); a crash
before the commit leaves unreferenced content, which the startup garbage collection removes.
Sizes for ImageFsInfo are kept as running counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cri_async.core import serde
from cri_async.core.errors import (
    CRIError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from cri_async.core.images import AuthConfig, FilesystemUsage
from cri_async.core.model import Image, ImageSpec
from cri_async.core.ports import Delete, Op, Put, StateStore
from cri_async.metrics import NO_METRICS, Recorder
from cri_async.registry import layout
from cri_async.registry import manifest as mf
from cri_async.registry import records as rs
from cri_async.registry.auth import AuthError, Credentials, from_auth_config
from cri_async.registry.client import RegistryClient, RegistryError, Unreachable
from cri_async.registry.content import ContentStore, DigestMismatch
from cri_async.registry.limits import LimitExceeded, UnpackLimits
from cri_async.registry.pull import Progress, Pulled, Puller
from cri_async.registry.records import ImageRecord
from cri_async.registry.reference import Reference, ReferenceError, normalize
from cri_async.registry.snapshots import LayerError, SnapshotInfo, SnapshotStore
from cri_async.tracing import NO_TRACER, Tracer

log = logging.getLogger("cri_async.registry.store")

IMAGE_KIND = "image"
SNAPSHOT_KIND = "snapshot"

# What a pull can fail with below the CRI errors; each becomes one (see _map_error).
PULL_ERRORS = (
    RegistryError,
    AuthError,
    mf.ManifestError,
    DigestMismatch,
    LayerError,
    LimitExceeded,
)

__all__ = ["ImageRecord", "OCIImageStore"]


@dataclass
class Counters:
    bytes: int = 0
    inodes: int = 0


def _offline_hint(host: str) -> str:
    return (
        f"; no endpoint of {host} answered. To pull through a mirror, list it under"
        f' registry.mirrors."{host}" (or a hosts.toml in registry.config_path); on a node'
        " without access, copy the image over and load it with `cri-async images import"
        " <OCI layout or docker save archive>`"
    )


def _map_error(what: str, e: Exception, verb: str = "pull", host: str = "") -> CRIError:
    msg = f"failed to {verb} {what}: {e}"
    if isinstance(e, LimitExceeded):
        return ResourceExhausted(msg)
    if isinstance(e, RegistryError):
        if isinstance(e, Unreachable) and host:
            msg += _offline_hint(host)
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
    in_use: Callable[[], set[str]] = set  # images of any container: their layers stay
    busy: Callable[[], set[str]] = set  # images of created or running containers
    limits: UnpackLimits = field(default_factory=UnpackLimits)
    max_lowers: int = 500  # snapshots one overlay mount stacks at most
    metrics: Recorder = NO_METRICS
    tracer: Tracer = NO_TRACER

    def __post_init__(self) -> None:
        self._records: dict[str, ImageRecord] = {}
        self._snaps: dict[str, SnapshotInfo] = {}
        self.content = ContentStore(self.root / "content")
        self.snapshots = SnapshotStore(self.root / "snapshots")
        self.puller = self._puller(self.client, self.max_downloads)
        self._pinned = {str(normalize(p)) for p in self.pinned}
        self._handlers = set(self.handlers)
        self._pulls: dict[str, asyncio.Task[str]] = {}
        self._progress: dict[str, Progress] = {}
        self._claims: dict[object, set[str]] = {}  # per pull or import in flight
        self._lock = asyncio.Lock()  # metadata changes + GC, never held across a download
        self.counters = Counters()

    def _puller(self, source: object, max_downloads: int) -> Puller:
        return Puller(
            source,
            self.content,
            self.snapshots,
            known=self._snaps.get,
            max_downloads=max_downloads,
            limits=self.limits,
            max_lowers=self.max_lowers,
        )

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
    def get(self, spec: ImageSpec) -> Image | None:
        rec = rs.find(self._records, spec.image)
        return rec.image if rec is not None else None

    def record(self, image_id: str) -> ImageRecord | None:
        return self._records.get(image_id)

    def list_images(self, spec: ImageSpec | None = None) -> list[Image]:
        if spec is not None and spec.image:
            img = self.get(spec)
            return [] if img is None else [img]
        return [r.image for r in self._records.values() if r.visible]

    def lower_dirs(self, image_id: str) -> list[str] | None:
        """The overlay lower directories of a container of ``image_id``, topmost first: its
        layers' snapshots, the deepest ones merged into one when there are too many."""
        rec = self._records.get(image_id)
        if rec is None:
            return None
        if len(rec.snapshot_ids) > self.snapshots.stack_limit(self.max_lowers):
            log.warning(
                "image %s has %d layers and no merged snapshot; pull it again to make one",
                image_id,
                len(rec.snapshot_ids),
            )
        return [str(self.snapshots.path(c)) for c in reversed(rec.snapshot_ids)]

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

        async with self._claiming() as claims:
            try:
                with self.tracer.child_span("registry pull", {"image": str(ref)}):
                    pulled, new_snaps = await self.puller.pull(
                        ref, creds, self.platform, watch=watch, claims=claims
                    )
            except PULL_ERRORS as e:
                raise _map_error(str(ref), e, host=ref.domain) from None
            async with self._lock:
                (image_id,) = await self._commit([(ref, pulled)], new_snaps, handler)
            return image_id

    @contextlib.asynccontextmanager
    async def _claiming(self) -> AsyncIterator[set[str]]:
        """The claims of one pull or import in flight (what it touches). If it fails, what it
        touched that nothing else needs is removed."""
        token = object()
        claims: set[str] = set()
        self._claims[token] = claims
        try:
            yield claims
        except Exception:
            del self._claims[token]
            await self._sweep(claims)
            raise
        finally:
            self._claims.pop(token, None)

    async def _commit(
        self, items: list[tuple[Reference, Pulled]], new_snaps: list[SnapshotInfo], handler: str
    ) -> list[str]:
        """Commit each (reference, pulled image) in one transaction, or nothing. Called under
        the lock. Returns the image ids."""
        new_snaps = [s for s in new_snaps if s.chain_id not in self._snaps]
        arriving = {s.chain_id for s in new_snaps}
        known = {b for r in self._records.values() for b in r.blobs}
        changed: dict[str, ImageRecord] = {}
        new_blobs: dict[str, int] = {}
        for ref, p in items:
            # Only blobs that are stored: a layer whose snapshot was already there (from a
            # copy compressed differently, say) was never downloaded.
            stored = tuple(b for b in p.blobs if b in known or self.content.has(b))
            if p.config_digest not in stored:
                raise Internal(f"failed to store {ref}: its config blob is missing")
            new_blobs.update((b, self.content.size(b)) for b in stored if b not in known)
            view = {**self._records, **changed}
            changed.update(
                rs.commit(
                    view,
                    ref,
                    p,
                    blobs=stored,
                    handler=handler,
                    pinned=self._pinned,
                    now=time.time_ns(),
                )
            )
            rec = changed[p.config_digest]
            missing = [c for c in rec.snapshot_ids if c not in self._snaps and c not in arriving]
            if missing:
                raise Unavailable(
                    f"failed to store {ref}: layer snapshot {missing[0]} was removed while it"
                    " was being pulled; pull it again"
                )
        ops: list[Op] = [Put(IMAGE_KIND, i, serde.dumps(r)) for i, r in changed.items()]
        ops += [Put(SNAPSHOT_KIND, s.chain_id, serde.dumps(s)) for s in new_snaps]
        await self.store.apply(ops)  # the images become visible here, atomically
        self._records.update(changed)
        for s in new_snaps:
            self._snaps[s.chain_id] = s
            self.counters.bytes += s.bytes
            self.counters.inodes += s.inodes
        self.counters.bytes += sum(new_blobs.values())
        self.counters.inodes += len(new_blobs)
        if any(not r.visible for r in changed.values()):  # a moved tag may orphan an image
            await self._gc_locked()
        return [p.config_digest for _, p in items]

    # -- import ----------------------------------------------------------------------------
    async def import_path(self, path: Path, name: str = "") -> list[tuple[str, str]]:
        """Load an OCI layout (dir or archive) or a ``docker save`` archive, verified like a
        pull, and commit all its images at once (or none). Returns (name, image id) per image.
        ``name`` names the archive's one image, normalised as a pull's reference
        (``busybox`` is ``docker.io/library/busybox:latest``), whatever the archive says."""
        given = None
        if name:
            try:
                given = normalize(name)
            except ReferenceError as e:
                raise InvalidArgument(f"--name: {e}") from None
        try:
            src, entries, tmp = await asyncio.to_thread(
                layout.open_path, path, self.limits.image_bytes
            )
        except layout.LayoutError as e:
            raise InvalidArgument(str(e)) from None
        except LimitExceeded as e:
            raise _map_error(str(path), e, "import") from None
        try:
            async with self._claiming() as claims:
                if not entries:
                    raise InvalidArgument(f"{path}: the layout lists no images")
                if given is not None and len(entries) > 1:
                    raise InvalidArgument(
                        f"{path}: --name names one image, and this archive holds {len(entries)}"
                    )
                puller = self._puller(src, self.max_downloads)
                items: list[tuple[Reference, Pulled]] = []
                snaps: list[SnapshotInfo] = []
                for entry in entries:
                    try:
                        refs = [given] if given is not None else layout.entry_refs(path, entry)
                    except layout.LayoutError as e:
                        raise InvalidArgument(str(e)) from None
                    try:
                        pulled, new = await puller.pull(
                            refs[0], Credentials(), self.platform, entry.digest, claims=claims
                        )
                    except PULL_ERRORS as e:
                        raise _map_error(str(path), e, "import") from None
                    items += [(r, pulled) for r in refs]
                    snaps += new
                async with self._lock:
                    ids = await self._commit(items, snaps, "")
                return [(str(r), i) for (r, _), i in zip(items, ids, strict=True)]
        finally:
            if tmp is not None:
                await asyncio.to_thread(tmp.cleanup)

    # -- remove and garbage collection ----------------------------------------------------
    async def remove(self, spec: ImageSpec) -> None:
        """As containerd: remove the image ``spec`` resolves to, with all its tags and
        digest references; its layers go unless another image or a container needs them."""
        async with self._lock:
            rec = rs.find(self._records, spec.image)
            if rec is None:
                return
            if rec.image.pinned:
                raise FailedPrecondition(
                    f"image {spec.image!r} is pinned (images.pinned in the config)"
                )
            if rec.image.id in self.busy():
                raise FailedPrecondition(
                    f"image {spec.image!r} ({rec.image.id}) is used by a created or running"
                    " container; remove the container first"
                )
            new = rs.stripped(rec)
            await self.store.put(IMAGE_KIND, new.image.id, serde.dumps(new))
            self._records[new.image.id] = new
            await self._gc_locked()

    async def gc(self, *, sweep_orphans: bool = False) -> None:
        async with self._lock:
            await self._gc_locked(sweep_orphans=sweep_orphans)

    async def _gc_locked(self, *, sweep_orphans: bool = False) -> None:
        """Drop hidden images no container uses, then the blobs and snapshots only they
        held. ``sweep_orphans`` (startup only, when no pull can be in flight) also removes
        content no record knows: what a crashed pull left behind."""
        used = self.in_use()
        counted = {b for r in self._records.values() for b in r.blobs}
        ops: list[Op] = []
        for r in list(self._records.values()):
            if not r.visible and r.image.id not in used:
                ops.append(Delete(IMAGE_KIND, r.image.id))
                del self._records[r.image.id]
        keep_blobs = {b for r in self._records.values() for b in r.blobs}
        keep_snaps = {c for r in self._records.values() for c in r.snapshots}
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

    async def _sweep(self, claims: set[str]) -> None:
        """After a failed pull or import: remove the blobs and snapshots it touched that no
        image holds and no other pull in flight has claimed (claims are made on the event
        loop before a pull looks anything up, so nothing here can vanish under one)."""
        async with self._lock:
            blobs = {b for r in self._records.values() for b in r.blobs}
            for key in sorted(claims):
                if any(key in c for c in self._claims.values()):
                    continue
                if key not in self._snaps and self.snapshots.has(key):
                    await self.snapshots.remove(key)
                if key not in blobs and self.content.has(key):
                    self.content.delete(key)

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
            "snapshots": [str(self.snapshots.path(c)) for c in rec.snapshot_ids],
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
