"""Layer snapshots: each layer unpacked once, into ``snapshots/<chain id>``.

A snapshot directory is one layer's diff, ready to be an overlayfs lower directory. It is
unpacked into a temporary directory (off the event loop, with decompression and the diff-id
hash on a second thread) and renamed into place only after the uncompressed content matched
the image config's diff id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

from cri_async.registry.inflate import Inflater
from cri_async.registry.unpack import UnsafeLayer, unpack_layer

log = logging.getLogger("cri_async.registry.snapshots")


class LayerError(Exception):
    """A layer could not be unpacked (hostile, corrupt, or not matching its diff id)."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    chain_id: str
    diff_id: str
    bytes: int
    inodes: int


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in self.root.iterdir():
            if d.name.startswith("tmp-"):
                log.info("removing interrupted snapshot %s", d.name)
                shutil.rmtree(d, ignore_errors=True)

    def path(self, chain_id: str) -> Path:
        return self.root / chain_id.split(":", 1)[1]

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def _unpack_sync(
        self, chain_id: str, diff_id: str, blob: Path, compression: str
    ) -> SnapshotInfo:
        tmp = self.root / f"tmp-{secrets.token_hex(8)}"
        tmp.mkdir()
        try:
            with open(blob, "rb") as f:
                stream = Inflater(f, compression)
                try:
                    stats = unpack_layer(stream, tmp)  # type: ignore[arg-type]  # reads only
                    stream.drain()  # tar padding after the end-of-archive marker
                except UnsafeLayer as e:
                    raise LayerError(f"layer {diff_id} refused: {e}") from None
                except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
                    raise LayerError(f"layer {diff_id} is corrupt: {e}") from None
                finally:
                    stream.close()
            got = "sha256:" + stream.hash.hexdigest()
            if got != diff_id:
                raise LayerError(
                    f"layer content does not match the image config: diff id {diff_id}, got {got}"
                )
            dst = self.path(chain_id)
            if dst.exists():  # unpacked meanwhile by another pull of the same layer
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dst)
            return SnapshotInfo(chain_id, diff_id, stats.bytes, stats.inodes)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def unpack(
        self, chain_id: str, diff_id: str, blob: Path, compression: str
    ) -> SnapshotInfo:
        return await asyncio.to_thread(self._unpack_sync, chain_id, diff_id, blob, compression)

    async def remove(self, chain_id: str) -> None:
        src = self.path(chain_id)
        if not src.exists():
            return
        doomed = self.root / f"tmp-rm-{secrets.token_hex(8)}"
        os.replace(src, doomed)  # gone from view at once; the tree walk happens off-loop
        await asyncio.to_thread(shutil.rmtree, doomed, True)
