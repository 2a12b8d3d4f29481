"""One pull: resolve a reference, fetch manifest, config and layers, unpack snapshots.

Layers download concurrently (bounded) and each is unpacked as soon as it is verified,
so unpacking overlaps the remaining downloads. A blob or snapshot needed by several pulls
at once is fetched or unpacked once (single-flight by digest / chain id).

Before any layer downloads, the pull is refused if the image store's filesystem would keep
less than ``min_free_bytes`` free (estimated from the manifest's layer sizes), or if the
layers already on the node exceed the image limit; while layers unpack, ``registry.limits``
meters them. An image with more layers than one overlay mount can stack (``max_lowers``,
or fewer with long paths: ``SnapshotStore.stack_limit``) gets its deepest layers merged into
one snapshot.

Every digest and snapshot id the pull touches is added to its ``claims`` before it is
looked up or written, so that the store can tell what an in-flight pull still needs from
what a failed one left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cri_async.registry import manifest as mf
from cri_async.registry.auth import Credentials
from cri_async.registry.client import RegistryClient, RegistryError
from cri_async.registry.content import ContentStore, DigestMismatch
from cri_async.registry.limits import (
    KEY_IMAGE_BYTES,
    Budget,
    LayerMeter,
    LimitExceeded,
    UnpackLimits,
    check_free_space,
    human,
)
from cri_async.registry.reference import Reference
from cri_async.registry.snapshots import SnapshotInfo, SnapshotStore, flat_id

log = logging.getLogger("cri_async.registry.pull")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pulled:
    manifest_digest: str  # what the reference resolved to (index digest for an index)
    image_manifest_digest: str
    config_digest: str
    config: mf.ImageConfig
    layers: tuple[mf.Descriptor, ...]
    chain_ids: tuple[str, ...]
    blobs: tuple[str, ...]  # every blob this image holds: index?, manifest, config, layers
    size: int
    flat_id: str = ""  # the snapshot merging the deepest layers, when there are too many
    flat_depth: int = 0  # how many of the deepest layers it merges


@dataclass(slots=True)
class _Flight:
    """Work that several pulls may wait for: a download, an unpack, a merge."""

    task: asyncio.Future[Any]
    waiters: int = 0


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure in a task group's exceptions (not a sibling's cancellation)."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(group)
    return next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0])


class Progress:
    """Download progress of one pull, logged every few seconds."""

    def __init__(self, ref: str, total: int) -> None:
        self.ref = ref
        self.total = total
        self.done = 0
        self._last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 5:
            self._last = now
            log.info(
                "pulling %s: %.1f of %.1f MiB", self.ref, self.done / 2**20, self.total / 2**20
            )


class Puller:
    def __init__(
        self,
        client: RegistryClient | Any,
        content: ContentStore,
        snapshots: SnapshotStore,
        *,
        known: Callable[[str], SnapshotInfo | None] = lambda _c: None,
        max_downloads: int = 3,
        max_unpacks: int = 2,
        limits: UnpackLimits | None = None,
        max_lowers: int = 500,
    ) -> None:
        self.client = client
        self.content = content
        self.snapshots = snapshots
        self.limits = limits or UnpackLimits()
        self.max_lowers = max_lowers
        self._known = known  # snapshots the store has a record of
        self._downloads = asyncio.Semaphore(max_downloads)
        self._unpacks = asyncio.Semaphore(max_unpacks)
        self._flights: dict[str, _Flight] = {}

    async def _once(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` once for every caller that asks for ``key`` while it runs. A caller that
        is cancelled stops the work if no other caller waits for it, and waits until it has
        cleaned up."""
        flight = self._flights.get(key)
        if flight is None:

            async def run() -> Any:
                try:
                    return await fn()
                finally:
                    if self._flights.get(key) is flight:
                        del self._flights[key]

            flight = _Flight(asyncio.ensure_future(run()))
            self._flights[key] = flight
        flight.waiters += 1
        try:
            result: T = await asyncio.shield(flight.task)
            return result
        except asyncio.CancelledError:
            if flight.waiters == 1 and not flight.task.done():
                if self._flights.get(key) is flight:  # a new caller starts afresh
                    del self._flights[key]
                flight.task.cancel()
                await asyncio.wait([flight.task])
            raise
        finally:
            flight.waiters -= 1

    async def _manifest(
        self, ref: Reference, reference: str, creds: Credentials
    ) -> tuple[bytes, str, str]:
        got = await self.client.fetch_manifest(ref.domain, ref.path, reference, creds)
        by_digest = ":" in reference  # tags cannot contain ':'
        if by_digest:
            mf.verify(got.data, reference, f"manifest {reference}")
        media_type = mf.detect_media_type(got.data, got.media_type)
        if media_type in mf.SCHEMA1_TYPES:  # its digest covers a payload, not these bytes
            mf.parse(got.data, media_type)  # raises UnsupportedManifest
        digest = reference if by_digest else mf.digest_of(got.data)
        if not by_digest and got.digest and got.digest != digest:
            raise mf.ManifestError(
                f"manifest for {ref}: registry says {got.digest}, content is {digest}"
            )
        return got.data, media_type, digest

    async def _blob(
        self,
        ref: Reference,
        desc: mf.Descriptor,
        creds: Credentials,
        progress: Progress | None,
        claims: set[str],
    ) -> None:
        claims.add(desc.digest)
        if self.content.has(desc.digest):
            return

        async def fetch() -> None:
            if self.content.has(desc.digest):
                return
            async with self._downloads:
                w = self.content.writer(desc.digest, desc.size)
                try:
                    await self.client.fetch_blob(
                        ref.domain, ref.path, desc, w, creds, progress.add if progress else None
                    )
                    await w.commit()
                except BaseException:
                    w.abort()
                    raise

        await self._once(desc.digest, fetch)

    async def _layer(
        self,
        ref: Reference,
        desc: mf.Descriptor,
        diff_id: str,
        chain_id: str,
        creds: Credentials,
        progress: Progress,
        claims: set[str],
        budget: Budget,
    ) -> SnapshotInfo | None:
        """Returns the new snapshot's info, or None if the store already has it. A snapshot
        directory without a record (left by a crash) is unpacked again to learn its size;
        the copy on disk is kept."""
        claims.add(chain_id)
        if self._known(chain_id) is not None:
            return None
        await self._blob(ref, desc, creds, progress, claims)

        async def unpack() -> SnapshotInfo | None:
            if self._known(chain_id) is not None:
                return None
            async with self._unpacks:
                return await self.snapshots.unpack(
                    chain_id,
                    diff_id,
                    self.content.path(desc.digest),
                    mf.LAYER_TYPES[desc.media_type],
                    LayerMeter(diff_id, self.limits.layer_bytes, budget),
                    self.limits.layer_entries,
                )

        try:
            return await self._once("unpack:" + chain_id, unpack)
        except LimitExceeded as e:
            if e.budget is None or e.budget is budget:
                raise
            # The shared unpack ran on another pull's image budget; ours may allow it.
            return await self._once("unpack:" + chain_id, unpack)

    def _preflight(self, layers: tuple[mf.Descriptor, ...], chain: tuple[str, ...]) -> Budget:
        """Refuse before any layer downloads: the layers already on the node over the image
        limit, or too little disk space left (layers to fetch, counted twice: their blob and,
        at least as big, their unpacked snapshot). Returns the image's unpack budget."""
        known = [self._known(c) for c in chain]
        budget = Budget(self.limits.image_bytes, sum(k.size for k in known if k is not None))
        budget.check()
        needed = sum(
            d.size * (1 if self.content.has(d.digest) else 2)
            for d, k in zip(layers, known, strict=True)
            if k is None
        )
        check_free_space(self.content.root, needed, self.limits.min_free_bytes)
        return budget

    async def _flatten(
        self, chain: tuple[str, ...], claims: set[str]
    ) -> tuple[str, int, SnapshotInfo | None]:
        """(flat id, depth, new snapshot or None) for an image too tall for one mount."""
        fit = self.snapshots.stack_limit(self.max_lowers)
        if len(chain) <= fit:
            return "", 0, None
        depth = len(chain) - fit + 1
        flat = flat_id(chain[depth - 1])
        claims.add(flat)
        if self._known(flat) is not None:
            return flat, depth, None

        async def merge() -> SnapshotInfo | None:
            if self._known(flat) is not None:
                return None
            async with self._unpacks:
                return await self.snapshots.flatten(flat, chain[:depth])

        return flat, depth, await self._once("flatten:" + flat, merge)

    async def pull(
        self,
        ref: Reference,
        creds: Credentials,
        platform: mf.Platform,
        reference: str | None = None,
        watch: Callable[[Progress], None] | None = None,
        claims: set[str] | None = None,
    ) -> tuple[Pulled, list[SnapshotInfo]]:
        """Fetch ``ref`` (or, for imports, the manifest ``reference`` under ref's name)."""
        t0 = time.monotonic()
        claims = set() if claims is None else claims
        reference = reference or ref.digest or ref.tag or "latest"
        data, media_type, digest = await self._manifest(ref, reference, creds)
        top_digest = digest
        blobs = [digest]
        manifest_bytes = len(data)
        claims.add(digest)
        await self.content.put(digest, data)
        parsed = mf.parse(data, media_type)
        if isinstance(parsed, mf.Index):
            child = mf.choose(parsed, platform)
            data, media_type, digest = await self._manifest(ref, child.digest, creds)
            claims.add(digest)
            await self.content.put(digest, data)
            blobs.append(digest)
            manifest_bytes += len(data)
            parsed = mf.parse(data, media_type)
            if isinstance(parsed, mf.Index):
                raise mf.ManifestError("nested image indexes are not supported")
        manifest = parsed
        await self._blob(ref, manifest.config, creds, None, claims)
        config = mf.parse_config(self.content.read(manifest.config.digest))
        if len(config.diff_ids) != len(manifest.layers):
            raise mf.ManifestError(
                f"image config lists {len(config.diff_ids)} layers, the manifest "
                f"{len(manifest.layers)}"
            )
        chain = mf.chain_ids(config.diff_ids)
        budget = self._preflight(manifest.layers, chain)
        progress = Progress(str(ref), sum(d.size for d in manifest.layers))
        if watch is not None:
            watch(progress)
        try:  # the first failure stops the other layers (and what only they needed)
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._layer(ref, d, diff, cid, creds, progress, claims, budget))
                    for d, diff, cid in zip(manifest.layers, config.diff_ids, chain, strict=True)
                ]
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        results = [t.result() for t in tasks]
        # Layers unpacked by another pull's flight were metered there: count them all here.
        unpacked = sum(
            (r or self._known(c) or SnapshotInfo(c, "", 0, 0)).size
            for r, c in zip(results, chain, strict=True)
        )
        if unpacked > self.limits.image_bytes:
            raise LimitExceeded(
                f"the image unpacks to {human(unpacked)}, more than {human(budget.limit)}"
                f" (the limit {KEY_IMAGE_BYTES} = {budget.limit})",
                key=KEY_IMAGE_BYTES,
            )
        flat, depth, merged = await self._flatten(chain, claims)
        blobs += [manifest.config.digest, *(d.digest for d in manifest.layers)]
        # As containerd counts it: every descriptor of the image (index, manifest, config,
        # layers), so kubelet's image GC sees the same numbers on either runtime.
        size = manifest_bytes + manifest.config.size + sum(d.size for d in manifest.layers)
        log.info(
            "pulled %s (%s): %d layers, %.1f MiB in %.2fs",
            ref,
            top_digest,
            len(manifest.layers),
            size / 2**20,
            time.monotonic() - t0,
        )
        pulled = Pulled(
            manifest_digest=top_digest,
            image_manifest_digest=digest,
            config_digest=manifest.config.digest,
            config=config,
            layers=manifest.layers,
            chain_ids=chain,
            blobs=tuple(dict.fromkeys(blobs)),
            size=size,
            flat_id=flat,
            flat_depth=depth,
        )
        return pulled, [r for r in (*results, merged) if r is not None]


__all__ = ["DigestMismatch", "Progress", "Pulled", "Puller", "RegistryError"]
