"""Image records: names resolved as containerd resolves them, commits, removal (pure)."""

from __future__ import annotations

import pytest

from cri_async.core.model import Image
from cri_async.registry import manifest as mf
from cri_async.registry.pull import Pulled
from cri_async.registry.records import ImageRecord, commit, find, resolve, stripped
from cri_async.registry.reference import normalize

A = "sha256:" + "a" * 64
B = "sha256:" + "ab" * 32
M1, M2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def pulled(config_digest: str, manifest_digest: str, *, layers: int = 2) -> Pulled:
    chain = tuple(f"sha256:{i:064x}" for i in range(layers))
    return Pulled(
        manifest_digest=manifest_digest,
        image_manifest_digest=manifest_digest,
        config_digest=config_digest,
        config=mf.ImageConfig("linux", "amd64", chain, cmd=("sh",), user="1000"),
        layers=(),
        chain_ids=chain,
        blobs=(manifest_digest, config_digest),
        size=123,
    )


def test_resolve_by_id_prefix_tag_and_digest() -> None:
    images = [
        Image(A, repo_tags=("docker.io/library/busybox:latest",)),
        Image(B, repo_digests=(f"example.com/app@{M1}",)),
    ]
    assert resolve(images, "busybox") is images[0]
    assert resolve(images, "docker.io/library/busybox") is images[0]
    assert resolve(images, A) is images[0] and resolve(images, A[7:]) is images[0]
    assert resolve(images, "aaaa") is images[0]
    assert resolve(images, "aba") is images[1]
    assert resolve(images, "a") is None  # too short for a prefix, and no such name
    assert resolve(images, f"example.com/app@{M1}") is images[1]
    assert resolve(images, "example.com/app") is None  # only a digest reference
    assert resolve(images, "") is None and resolve(images, "Not A Ref//") is None


def test_commit_moves_tags_and_keeps_digest_references() -> None:
    ref = normalize("example.com/app:1")
    first = commit({}, ref, pulled(A, M1), blobs=(M1, A), handler="", pinned=set(), now=1)
    assert set(first) == {A}
    img = first[A].image
    assert img.repo_tags == ("example.com/app:1",)
    assert img.repo_digests == (f"example.com/app@{M1}",)
    assert (img.uid, img.cmd, img.size) == (1000, ("sh",), 123)
    again = commit(first, ref, pulled(A, M1), blobs=(M1, A), handler="runc", pinned=set(), now=2)
    assert again[A].image == img and again[A].handlers == ("", "runc")

    moved = commit(first, ref, pulled(B, M2), blobs=(M2, B), handler="", pinned=set(), now=3)
    assert moved[A].image.repo_tags == () and moved[A].visible  # its digest reference stays
    assert moved[B].image.repo_tags == ("example.com/app:1",)
    by_digest = commit(
        first,
        normalize(f"example.com/app@{M1}"),
        pulled(A, M1),
        blobs=(),
        handler="",
        pinned={"example.com/app:1"},
        now=4,
    )
    assert by_digest[A].image.repo_tags == ("example.com/app:1",) and by_digest[A].image.pinned


def test_stripped_records_are_found_by_nothing() -> None:
    ref = normalize("example.com/app:1")
    recs = commit({}, ref, pulled(A, M1), blobs=(), handler="", pinned={"example.com/app:1"}, now=1)
    assert find(recs, "example.com/app:1") is recs[A]
    gone = {A: stripped(recs[A])}
    assert not gone[A].visible and not gone[A].image.pinned
    assert gone[A].chain_ids == recs[A].chain_ids  # layers stay until garbage collection
    for name in ("example.com/app:1", A, A[7:19], f"example.com/app@{M1}"):
        assert find(gone, name) is None, name


@pytest.mark.parametrize(("layers", "depth"), [(3, 0), (600, 101)])
def test_snapshot_ids_with_and_without_a_merged_snapshot(layers: int, depth: int) -> None:
    p = pulled(A, M1, layers=layers)
    flat = "sha256:" + "f" * 64 if depth else ""
    rec = ImageRecord(Image(A), A, p.chain_ids, (), flat_id=flat, flat_depth=depth)
    ids = rec.snapshot_ids
    assert len(ids) == min(layers, 500)
    assert ids[-1] == p.chain_ids[-1]
    assert (ids[0] == flat) is bool(depth)
    assert rec.snapshots == {*p.chain_ids, *((flat,) if flat else ())}
