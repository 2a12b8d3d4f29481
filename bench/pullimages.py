"""The two images of the cold-pull benchmark, built in memory (see ``pull.py``).

* ``a``, "big": 20 gzip layers of 10 MiB each (200 MiB uncompressed, 400 files). Half of
  the files are raw pseudo-random bytes (incompressible; deflate stores them), the other
  half pseudo-random hex text (about 2:1 under gzip, so inflate really decodes codes);
* ``b``, "small files": one gzip layer of 10,000 files of 1-4 KiB in 100 nested directories.

``small=True`` makes smoke-sized ones (4 layers of 1 MiB; 1,000 files).
"""

from __future__ import annotations

import concurrent.futures
import random
from dataclasses import dataclass, field

from tests.support import images as im

MIB = 1 << 20
HEX = bytes(b"0123456789abcdef"[i & 15] for i in range(256))


@dataclass(frozen=True)
class BenchImage:
    key: str  # "a" | "b"
    name: str
    repo: str
    built: im.BuiltImage = field(repr=False)
    files: int
    uncompressed: int

    @property
    def layers(self) -> int:
        return len(self.built.layers)

    @property
    def compressed(self) -> int:
        return sum(lay.size for lay in self.built.layers)


def _content(rng: random.Random, size: int, text: bool) -> bytes:
    data = rng.randbytes(size)
    return data.translate(HEX) if text else data


def big_layer_entries(seed: int, small: bool = False) -> list[im.Entry]:
    """10 MiB in 20 files: 4 x 2 MiB and 16 x 128 KiB, alternately raw and hex (``small``:
    1 MiB in 8 files, for smoke runs)."""
    rng = random.Random(seed)
    entries: list[im.Entry] = []
    sizes = [256 * 1024] * 4 + [16 * 1024] * 4 if small else [2 * MIB] * 4 + [128 * 1024] * 16
    for i, size in enumerate(sizes):
        entries.append(
            im.File(f"opt/big/l{seed:02d}/f{i:02d}.bin", _content(rng, size, text=i % 2 == 1))
        )
    return entries


def small_files_entries(seed: int, count: int) -> list[im.Entry]:
    """``count`` files of 1-4 KiB of hex text, 100 per directory, two levels deep."""
    rng = random.Random(seed)
    entries: list[im.Entry] = []
    for i in range(count):
        d, f = divmod(i, 100)
        path = f"usr/share/pkg{d // 10:02d}/sub{d % 10}/file{f:03d}.txt"
        entries.append(im.File(path, _content(rng, rng.randint(1024, 4096), text=True)))
    return entries


def build_images(only: str | None, workers: int, small: bool = False) -> list[BenchImage]:
    """Images a and b; ``small``: 4 layers of 1 MiB and 1,000 files (smoke runs)."""
    out: list[BenchImage] = []
    n_layers, n_files = (4, 1_000) if small else (20, 10_000)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # zlib releases the GIL
        if only in (None, "a"):
            entries = pool.map(lambda s: im.layer(big_layer_entries(s, small)), range(n_layers))
            layers = list(entries)
            built = im.build_image(layers)
            size = sum(len(lay.tar) for lay in layers)
            name = f"a: {size / MIB:.0f} MiB / {n_layers} layers"
            files = n_layers * (8 if small else 20)
            out.append(BenchImage("a", name, "bench/big", built, files=files, uncompressed=size))
        if only in (None, "b"):
            lay = im.layer(small_files_entries(1000, n_files))
            built = im.build_image([lay])
            name = f"b: {n_files:,} small files"
            out.append(
                BenchImage(
                    "b", name, "bench/small", built, files=n_files, uncompressed=len(lay.tar)
                )
            )
    return out
