"""Image records and the pure rules that change them: resolve a name, commit a pull, remove.

An ``ImageRecord`` is what the store keeps per image id (the config digest): the CRI
``Image`` with its tags and digest references, the layers' chain ids, the blobs it holds, and
the flattened snapshot standing in for its deepest layers when it has too many. No I/O here:
the store decides what to write from what these functions return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cri_async.core.model import Image
from cri_async.registry import manifest as mf
from cri_async.registry.reference import Reference, ReferenceError, normalize, parse_image_id

if TYPE_CHECKING:
    from cri_async.registry.pull import Pulled

__all__ = ["ImageRecord", "commit", "find", "resolve", "stripped"]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image: Image
    config_digest: str
    chain_ids: tuple[str, ...]
    blobs: tuple[str, ...]
    handlers: tuple[str, ...] = ()
    pulled_at: int = 0
    flat_id: str = ""  # the snapshot merging the ``flat_depth`` deepest layers, if any
    flat_depth: int = 0

    @property
    def visible(self) -> bool:
        return bool(self.image.repo_tags or self.image.repo_digests)

    @property
    def snapshot_ids(self) -> tuple[str, ...]:
        """What a container of this image stacks, bottom first."""
        if not self.flat_depth:
            return self.chain_ids
        return (self.flat_id, *self.chain_ids[self.flat_depth :])

    @property
    def snapshots(self) -> set[str]:
        """Every snapshot this record keeps alive."""
        return {*self.chain_ids, *((self.flat_id,) if self.flat_id else ())}


def resolve(images: Iterable[Image], text: str) -> Image | None:
    """The image ``text`` names, as containerd resolves it: an image id (with or without
    ``sha256:``), a unique id prefix of at least 3 hex digits, or a reference (normalised:
    ``busybox`` is ``docker.io/library/busybox:latest``) by tag or digest."""
    if not text:
        return None
    images = list(images)
    image_id = parse_image_id(text)
    if image_id is not None:
        return next((i for i in images if i.id == image_id), None)
    if len(text) >= 3 and all(c in "0123456789abcdef" for c in text):
        hits = [i for i in images if i.id[7:].startswith(text)]
        if len(hits) == 1:
            return hits[0]
    try:
        ref = normalize(text)
    except ReferenceError:
        return None
    for i in images:
        if ref.digest is not None:
            if f"{ref.name}@{ref.digest}" in i.repo_digests:
                return i
        elif str(ref) in i.repo_tags:
            return i
    return None


def find(records: Mapping[str, ImageRecord], text: str) -> ImageRecord | None:
    """The visible image record ``text`` names (see ``resolve``)."""
    image = resolve((r.image for r in records.values() if r.visible), text)
    return None if image is None else records[image.id]


def stripped(rec: ImageRecord) -> ImageRecord:
    """``rec`` without any tag or digest reference: what RemoveImage leaves (as containerd,
    which deletes every reference of the image the name resolves to)."""
    return replace(rec, image=replace(rec.image, repo_tags=(), repo_digests=(), pinned=False))


def commit(
    records: Mapping[str, ImageRecord],
    ref: Reference,
    pulled: Pulled,
    *,
    blobs: tuple[str, ...],
    handler: str,
    pinned: set[str],
    now: int,
) -> dict[str, ImageRecord]:
    """The records that change when ``pulled`` is committed under ``ref``: the image itself
    (created, or given the new tag and digest reference) and any image the tag moves from."""
    image_id = pulled.config_digest
    tag = None if ref.digest else str(ref)
    digest_ref = f"{ref.name}@{pulled.manifest_digest}"
    changed: dict[str, ImageRecord] = {}
    if tag is not None:  # a tag moves: take it from whichever image held it
        for r in records.values():
            if r.image.id != image_id and tag in r.image.repo_tags:
                tags = tuple(t for t in r.image.repo_tags if t != tag)
                changed[r.image.id] = replace(r, image=replace(r.image, repo_tags=tags))
    cur = records.get(image_id)
    c = pulled.config
    uid, username = mf.user_fields(c.user)
    base = (
        cur.image
        if cur is not None
        else Image(
            id=image_id,
            size=pulled.size,
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
        base, repo_tags=tags, repo_digests=digests, pinned=any(t in pinned for t in tags)
    )
    changed[image_id] = ImageRecord(
        image,
        image_id,
        pulled.chain_ids,
        tuple(dict.fromkeys((*(cur.blobs if cur else ()), *blobs))),
        tuple(sorted({*(cur.handlers if cur else ()), handler})),
        now,
        pulled.flat_id or (cur.flat_id if cur else ""),
        pulled.flat_depth or (cur.flat_depth if cur else 0),
    )
    return changed
