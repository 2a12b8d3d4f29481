"""One pull: resolve a reference, fetch manifest, config and layers, unpack snapshots.

Layers download concurrently (bounded) and each is unpacked as soon as it is verified,
so unpacking overlaps the remaining downloads. A blob or snapshot needed by several pulls
at once is fetched or unpacked once (single-flight by digest / chain id).
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
from cri_async.registry.reference import Reference
from cri_async.registry.snapshots import SnapshotInfo, SnapshotStore

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
    ) -> None:
        self.client = client
        self.content = content
        self.snapshots = snapshots
        self._known = known  # snapshots the store has a record of
        self._downloads = asyncio.Semaphore(max_downloads)
        self._unpacks = asyncio.Semaphore(max_unpacks)
        self._flights: dict[str, asyncio.Task[Any]] = {}

    async def _once(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        task = self._flights.get(key)
        if task is None:

            async def run() -> Any:
                try:
                    return await fn()
                finally:
                    self._flights.pop(key, None)

            task = asyncio.ensure_future(run())
            self._flights[key] = task
        result: T = await asyncio.shield(task)
        return result

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
        self, ref: Reference, desc: mf.Descriptor, creds: Credentials, progress: Progress | None
    ) -> None:
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
    ) -> SnapshotInfo | None:
        """Returns the new snapshot's info, or None if the store already has it. A snapshot
        directory without a record (left by a failed pull) is unpacked again to learn its
        size; the copy on disk is kept."""
        if self._known(chain_id) is not None:
            return None
        await self._blob(ref, desc, creds, progress)

        async def unpack() -> SnapshotInfo | None:
            if self._known(chain_id) is not None:
                return None
            async with self._unpacks:
                return await self.snapshots.unpack(
                    chain_id,
                    diff_id,
                    self.content.path(desc.digest),
                    mf.LAYER_TYPES[desc.media_type],
                )

        return await self._once("unpack:" + chain_id, unpack)

    async def pull(
        self,
        ref: Reference,
        creds: Credentials,
        platform: mf.Platform,
        reference: str | None = None,
        watch: Callable[[Progress], None] | None = None,
    ) -> tuple[Pulled, list[SnapshotInfo]]:
        """Fetch ``ref`` (or, for imports, the manifest ``reference`` under ref's name)."""
        t0 = time.monotonic()
        reference = reference or ref.digest or ref.tag or "latest"
        data, media_type, digest = await self._manifest(ref, reference, creds)
        top_digest = digest
        blobs = [digest]
        manifest_bytes = len(data)
        await self.content.put(digest, data)
        parsed = mf.parse(data, media_type)
        if isinstance(parsed, mf.Index):
            child = mf.choose(parsed, platform)
            data, media_type, digest = await self._manifest(ref, child.digest, creds)
            await self.content.put(digest, data)
            blobs.append(digest)
            manifest_bytes += len(data)
            parsed = mf.parse(data, media_type)
            if isinstance(parsed, mf.Index):
                raise mf.ManifestError("nested image indexes are not supported")
        manifest = parsed
        await self._blob(ref, manifest.config, creds, None)
        config = mf.parse_config(self.content.read(manifest.config.digest))
        if len(config.diff_ids) != len(manifest.layers):
            raise mf.ManifestError(
                f"image config lists {len(config.diff_ids)} layers, the manifest "
                f"{len(manifest.layers)}"
            )
        chain = mf.chain_ids(config.diff_ids)
        progress = Progress(str(ref), sum(d.size for d in manifest.layers))
        if watch is not None:
            watch(progress)
        results = await asyncio.gather(
            *(
                self._layer(ref, d, diff, cid, creds, progress)
                for d, diff, cid in zip(manifest.layers, config.diff_ids, chain, strict=True)
            )
        )
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
        )
        return pulled, [r for r in results if r is not None]


__all__ = ["DigestMismatch", "Progress", "Pulled", "Puller", "RegistryError"]
