"""Limits: each refusal names the limit and its config key; budgets are shared and exact."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cri_async import config
from cri_async.configtoml import default_toml
from cri_async.registry.limits import (
    KEY_IMAGE_BYTES,
    KEY_LAYER_BYTES,
    KEY_LAYER_ENTRIES,
    KEY_MIN_FREE,
    Budget,
    LayerMeter,
    LimitExceeded,
    UnpackLimits,
    check_free_space,
    human,
)


def test_keys_are_config_keys_and_defaults_agree() -> None:
    images = config.Config().images
    defaults = UnpackLimits()
    for key, value in (
        (KEY_LAYER_BYTES, defaults.layer_bytes),
        (KEY_IMAGE_BYTES, defaults.image_bytes),
        (KEY_LAYER_ENTRIES, defaults.layer_entries),
        (KEY_MIN_FREE, defaults.min_free_bytes),
    ):
        section, name = key.split(".")
        assert section == "images" and getattr(images, name) == value, key
        assert f"\n{name} = {value}\n" in default_toml()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[images]\nmax_layer_bytes = 0", "images.max_layer_bytes: must be at least 1"),
        ("[images]\nmax_layer_entries = -1", "images.max_layer_entries"),
        ("[images]\nmin_free_bytes = -1", "images.min_free_bytes: must not be negative"),
        ("[images]\nmax_mount_layers = 501", "images.max_mount_layers: must be between 2"),
        ("[images]\nmax_mount_layers = 1", "images.max_mount_layers"),
        ("[images]\nmax_image_bytes = '64G'", "images.max_image_bytes: expected int"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.parse(text)


def test_human_sizes() -> None:
    assert [human(n) for n in (0, 1023, 1024, 1536 << 10, 64 << 30, 3 << 40)] == [
        "0 bytes",
        "1023 bytes",
        "1.0 KiB",
        "1.5 MiB",
        "64.0 GiB",
        "3072.0 GiB",
    ]


def test_meter_and_budget() -> None:
    budget = Budget(100)
    a, b = LayerMeter("sha256:a", 60, budget), LayerMeter("sha256:b", 60, budget)
    a(60)
    with pytest.raises(LimitExceeded) as err:
        a(1)
    assert err.value.key == KEY_LAYER_BYTES and err.value.budget is None
    assert "layer sha256:a unpacks to more than 60 bytes" in str(err.value)
    b(40)
    with pytest.raises(LimitExceeded) as err:
        b(1)
    assert err.value.key == KEY_IMAGE_BYTES and err.value.budget is budget
    assert str(err.value) == (
        "the image unpacks to more than 100 bytes (the limit images.max_image_bytes = 100)"
    )
    Budget(10, used=10).check()
    with pytest.raises(LimitExceeded):
        Budget(10, used=11).check()


def test_budget_counts_exactly_across_threads() -> None:
    budget = Budget(1 << 40)

    def spend() -> None:
        for _ in range(10_000):
            budget.take(3)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(LimitExceeded):
        budget.take((1 << 40) - 120_000 + 1)


def test_free_space_floor(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    check_free_space(tmp_path, 0, 0)
    check_free_space(tmp_path, 1 << 60, 0)  # 0 turns the check off
    check_free_space(tmp_path, 0, 4096)
    with pytest.raises(LimitExceeded) as err:
        check_free_space(tmp_path, 0, free * 2)
    assert err.value.key == KEY_MIN_FREE
    assert f"(the limit images.min_free_bytes = {free * 2})" in str(err.value)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(LimitExceeded, match=r"this needs about 64\.0 GiB"):
        check_free_space(tmp_path, 64 << 30, free)


def test_pull_preflight_estimates_from_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers to download count twice (blob, then at least as much unpacked), a stored blob
    once, a layer already unpacked not at all; recorded layers count against the image."""
    from cri_async.registry import pull
    from cri_async.registry.content import ContentStore
    from cri_async.registry.manifest import Descriptor
    from cri_async.registry.snapshots import SnapshotInfo, SnapshotStore

    content = ContentStore(tmp_path / "content")
    content.open()
    stored = "sha256:" + "b" * 64
    content.path(stored).parent.mkdir(parents=True, exist_ok=True)
    content.path(stored).write_bytes(b"x")
    known = {"sha256:c3": SnapshotInfo("sha256:c3", "", 0, 0, size=700)}
    puller = pull.Puller(
        None,
        content,
        SnapshotStore(tmp_path / "snapshots"),
        known=known.get,
        limits=UnpackLimits(image_bytes=1000, min_free_bytes=5),
    )
    seen: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(pull, "check_free_space", lambda *a: seen.append(a))
    layers = tuple(
        Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, s)
        for d, s in (("sha256:" + "a" * 64, 100), (stored, 10), ("sha256:" + "d" * 64, 1))
    )
    budget = puller._preflight(layers, ("sha256:c1", "sha256:c2", "sha256:c3"))
    assert seen == [(content.root, 2 * 100 + 10, 5)]
    budget.take(300)
    with pytest.raises(LimitExceeded):
        budget.take(1)  # 700 recorded + 300 + 1
    known["sha256:c1"] = SnapshotInfo("sha256:c1", "", 0, 0, size=301)
    with pytest.raises(LimitExceeded, match=r"images\.max_image_bytes"):
        puller._preflight(layers, ("sha256:c1", "sha256:c2", "sha256:c3"))
