"""The fake image store follows the registry store's removal rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_async.core.errors import FailedPrecondition
from cri_async.core.model import ImageSpec
from cri_async.registry.fake_store import CatalogImage, FakeImageStore
from cri_async.store.db import SQLiteStore


async def test_remove_takes_the_image_unless_pinned_or_busy(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db", sync="normal")
    await store.open()
    busy: set[str] = set()
    images = FakeImageStore(
        store,
        [CatalogImage("busybox"), CatalogImage("registry.k8s.io/pause:3.10")],
        pinned=["registry.k8s.io/pause:3.10"],
        busy=lambda: busy,
    )
    try:
        bb = await images.pull(ImageSpec("busybox"), None)
        digest_ref = images.get(ImageSpec(bb)).repo_digests[0]  # type: ignore[union-attr]
        assert await images.pull(ImageSpec(digest_ref), None) == bb
        pause = await images.pull(ImageSpec("registry.k8s.io/pause:3.10"), None)
        with pytest.raises(FailedPrecondition, match="pinned"):
            await images.remove(ImageSpec("registry.k8s.io/pause:3.10"))
        busy.add(bb)
        with pytest.raises(FailedPrecondition, match="created or running container"):
            await images.remove(ImageSpec("busybox"))
        assert images.get(ImageSpec("busybox")) is not None
        busy.clear()
        await images.remove(ImageSpec("busybox"))
        assert images.get(ImageSpec(bb)) is None
        assert [i.id for i in images.list_images()] == [pause]
        await images.remove(ImageSpec("busybox"))  # absent: not an error
    finally:
        await store.close()
