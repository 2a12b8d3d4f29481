"""Layer snapshots: each layer unpacked once, into ``snapshots/<chain id>``.

A snapshot directory is one layer's diff, ready to be an overlayfs lower directory. It is
unpacked into a temporary directory (off the event loop, with decompression and the diff-id
hash on a second thread) and renamed into place only after the uncompressed content matched
the image config's diff id. The limits of ``registry.limits`` apply while it unpacks.

An image with more layers than an overlay mount may stack also gets a *flattened* snapshot:
its deepest layers merged into one (``registry.flatten``), kept under an id derived from the
chain id of the topmost merged layer (``flat_id``), so images sharing those layers share it.
It is made the same way: in a temporary directory, then renamed into place.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import zstandard

from cri_async import faults
from cri_async.registry.flatten import flatten
from cri_async.registry.inflate import Cancelled, Inflater
from cri_async.registry.limits import KEY_LAYER_ENTRIES, LayerMeter, LimitExceeded
from cri_async.registry.unpack import UnsafeLayer, unpack_layer

log = logging.getLogger("cri_async.registry.snapshots")
T = TypeVar("T")

# The kernel stacks at most 500 lower directories in one overlay mount. The mount's line in
# /proc/self/mountinfo lists them all, and runc (like containerd) reads that file with Go's
# bufio.Scanner, which fails on a line over 64 KiB ("bufio.Scanner: token too long" at
# `runc create`): the lower directories' paths must also fit in this many bytes.
LOWERDIR_BYTES = 48 * 1024


class LayerError(Exception):
    """A layer could not be unpacked (hostile, corrupt, or not matching its diff id)."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    chain_id: str  # for a flattened snapshot, its flat_id
    diff_id: str  # "" for a flattened snapshot
    bytes: int  # disk use: regular files' sizes (a flattened snapshot's are hard links)
    inodes: int
    size: int = 0  # the uncompressed layer's size (what images.max_*_bytes count)


def flat_id(top_chain_id: str) -> str:
    """The id of the snapshot merging every layer up to the one of ``top_chain_id``."""
    return "sha256:" + hashlib.sha256(f"flattened {top_chain_id}".encode()).hexdigest()


async def _in_thread(fn: Callable[[threading.Event], T]) -> T:
    """``fn(cancel)`` in a worker thread. If the caller is cancelled, ``cancel`` is set and
    the thread awaited: by the time the cancellation propagates, it has removed its
    temporary directory, and nothing it made can appear later."""
    cancel = threading.Event()
    work = asyncio.ensure_future(asyncio.to_thread(fn, cancel))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait([work])
        raise


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

    def stack_limit(self, max_lowers: int) -> int:
        """How many snapshots one overlay mount can stack: ``max_lowers``, or fewer when
        their paths (all of one length) would not fit in ``LOWERDIR_BYTES``."""
        per_path = len(str(self.path("sha256:" + "0" * 64))) + 1  # and a ':'
        return max(2, min(max_lowers, LOWERDIR_BYTES // per_path))

    def _unpack_sync(
        self,
        chain_id: str,
        diff_id: str,
        blob: Path,
        compression: str,
        meter: LayerMeter | None = None,
        max_entries: int | None = None,
        cancel: threading.Event | None = None,
    ) -> SnapshotInfo:
        tmp = self.root / f"tmp-{secrets.token_hex(8)}"
        tmp.mkdir()
        try:
            with open(blob, "rb") as f:
                stream = Inflater(f, compression, meter, cancel)
                try:
                    stats = unpack_layer(
                        stream,  # type: ignore[arg-type]  # reads only
                        tmp,
                        max_entries=max_entries,
                    )
                    stream.drain()  # tar padding after the end-of-archive marker
                except LimitExceeded as e:
                    if e.key != KEY_LAYER_ENTRIES:
                        raise
                    raise LimitExceeded(f"layer {diff_id} has {e}", key=e.key) from None
                except UnsafeLayer as e:
                    raise LayerError(f"layer {diff_id} refused: {e}") from None
                except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
                    raise LayerError(f"layer {diff_id} is corrupt: {e}") from None
                finally:
                    stream.close()
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
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
            return SnapshotInfo(chain_id, diff_id, stats.bytes, stats.inodes, stream.size)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def unpack(
        self,
        chain_id: str,
        diff_id: str,
        blob: Path,
        compression: str,
        meter: LayerMeter | None = None,
        max_entries: int | None = None,
    ) -> SnapshotInfo:
        info = await _in_thread(
            lambda cancel: self._unpack_sync(
                chain_id, diff_id, blob, compression, meter, max_entries, cancel
            )
        )
        faults.reached("snapshot")
        return info

    def _flatten_sync(
        self, flat: str, chain_ids: Sequence[str], cancel: threading.Event | None = None
    ) -> SnapshotInfo:
        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")

        tmp = self.root / f"tmp-{secrets.token_hex(8)}"
        tmp.mkdir()
        try:
            try:
                stats = flatten([self.path(c) for c in chain_ids], tmp, check)
                check()
            except OSError as e:
                raise LayerError(f"cannot merge the {len(chain_ids)} deepest layers: {e}") from e
            dst = self.path(flat)
            if dst.exists():  # made meanwhile by another pull
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dst)
            log.info("merged the %d deepest layers into %s", len(chain_ids), flat)
            return SnapshotInfo(flat, "", stats.bytes, stats.inodes)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def flatten(self, flat: str, chain_ids: Sequence[str]) -> SnapshotInfo:
        """Merge the snapshots ``chain_ids`` (bottom first) into snapshot ``flat``."""
        return await _in_thread(lambda cancel: self._flatten_sync(flat, chain_ids, cancel))

    async def remove(self, chain_id: str) -> None:
        src = self.path(chain_id)
        if not src.exists():
            return
        doomed = self.root / f"tmp-rm-{secrets.token_hex(8)}"
        os.replace(src, doomed)  # gone from view at once; the tree walk happens off-loop
        await asyncio.to_thread(shutil.rmtree, doomed, True)
