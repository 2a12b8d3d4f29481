"""What one pull or import may cost the node: unpacked bytes and entries, and free space.

A decompression bomb (gigabytes of zeros in a small gzip layer) is stopped while it inflates:
``LayerMeter`` counts the decompressed bytes of one layer against ``layer_bytes`` and charges
them to the image's ``Budget`` (``image_bytes``, shared by the layers that unpack at once).
``layer_entries`` bounds the tar members of a layer (checked by the unpacker). Before any
layer downloads, ``check_free_space`` refuses a pull that would leave less than
``min_free_bytes`` free on the image store's filesystem. Every refusal is ``LimitExceeded``
naming the limit and the config key that sets it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "KEY_IMAGE_BYTES",
    "KEY_LAYER_BYTES",
    "KEY_LAYER_ENTRIES",
    "KEY_MIN_FREE",
    "Budget",
    "LayerMeter",
    "LimitExceeded",
    "UnpackLimits",
    "check_free_space",
    "human",
    "too_many_entries",
]

KEY_LAYER_BYTES: Final = "images.max_layer_bytes"
KEY_IMAGE_BYTES: Final = "images.max_image_bytes"
KEY_LAYER_ENTRIES: Final = "images.max_layer_entries"
KEY_MIN_FREE: Final = "images.min_free_bytes"


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """The limits, as ``[images]`` in the config sets them (see ``cri-async config --default``)."""

    layer_bytes: int = 32 << 30
    image_bytes: int = 64 << 30
    layer_entries: int = 1_000_000
    min_free_bytes: int = 1 << 30


class LimitExceeded(Exception):
    """A pull or import would go beyond a limit. ``key`` is the config key that sets it;
    ``budget`` the image budget that refused, when it was one."""

    def __init__(self, message: str, *, key: str, budget: Budget | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.budget = budget


def human(n: int) -> str:
    """Bytes for a message: ``1.5 GiB``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _limit(key: str, value: int) -> str:
    return f"the limit {key} = {value}"


class Budget:
    """Uncompressed bytes one image may still unpack; thread-safe (layers unpack at once)."""

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        self._used = used
        self._lock = threading.Lock()

    def check(self) -> None:
        """Refuse now if what is already spent is over the limit."""
        self.take(0)

    def take(self, n: int) -> None:
        with self._lock:
            self._used += n
            used = self._used
        if used > self.limit:
            raise LimitExceeded(
                f"the image unpacks to more than {human(self.limit)}"
                f" ({_limit(KEY_IMAGE_BYTES, self.limit)})",
                key=KEY_IMAGE_BYTES,
                budget=self,
            )


class LayerMeter:
    """Counts one layer's decompressed bytes (``__call__`` per chunk, on the inflater's
    thread) against the layer limit and the image's budget."""

    def __init__(self, layer: str, limit: int, budget: Budget | None) -> None:
        self.layer = layer
        self.limit = limit
        self.budget = budget
        self.bytes = 0

    def __call__(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limit:
            raise LimitExceeded(
                f"layer {self.layer} unpacks to more than {human(self.limit)}"
                f" ({_limit(KEY_LAYER_BYTES, self.limit)})",
                key=KEY_LAYER_BYTES,
            )
        if self.budget is not None:
            self.budget.take(n)


def too_many_entries(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"more than {limit} entries ({_limit(KEY_LAYER_ENTRIES, limit)})", key=KEY_LAYER_ENTRIES
    )


def check_free_space(path: Path, needed: int, floor: int) -> None:
    """Refuse when writing ``needed`` bytes under ``path`` would leave less than ``floor``
    free (``statvfs``: the blocks an unprivileged writer may still use)."""
    if floor <= 0:
        return
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free - needed < floor:
        raise LimitExceeded(
            f"not enough disk space: this needs about {human(needed)} and {path} has"
            f" {human(free)} free, which would leave less than {human(floor)}"
            f" ({_limit(KEY_MIN_FREE, floor)})",
            key=KEY_MIN_FREE,
        )
