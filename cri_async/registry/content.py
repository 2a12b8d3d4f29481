"""Content store: blobs by digest under ``blobs/<alg>/<hex>``.

A blob is written to ``ingest/`` while it downloads, hashed as it goes, checked against
its digest and size, fsynced, and only then renamed into place: a reader never sees a
partial or unverified blob. What is left in ``ingest/`` after a crash is swept at startup.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

from cri_async import faults

FLUSH_AT = 1 << 20  # hand bytes to the writer thread in ~1 MiB batches


class DigestMismatch(Exception):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """Receives a blob's bytes (possibly resuming), verifies and commits it."""

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        algo = digest.split(":", 1)[0]
        self._hash = hashlib.new(algo)
        self.path = store.ingest / f"{digest.replace(':', '-')}-{secrets.token_hex(4)}"
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115
        self.written = 0
        self._pending: list[bytes] = []
        self._pending_len = 0

    def _write_sync(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self._hash.update(c)  # hashlib releases the GIL on large buffers
            self._file.write(c)

    async def write(self, data: bytes) -> None:
        if self.written + self._pending_len + len(data) > self.size:
            raise DigestMismatch(
                f"blob {self.digest}: more than the {self.size} bytes the manifest declares"
            )
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= FLUSH_AT:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            chunks, self._pending = self._pending, []
            n, self._pending_len = self._pending_len, 0
            await asyncio.to_thread(self._write_sync, chunks)
            self.written += n

    async def commit(self) -> Path:
        await self.flush()
        if self.written != self.size:
            raise DigestMismatch(
                f"blob {self.digest}: got {self.written} bytes, the manifest declares {self.size}"
            )
        got = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if got != self.digest:
            raise DigestMismatch(f"blob digest mismatch: expected {self.digest}, got {got}")

        def finish() -> Path:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            dst = self.store.path(self.digest)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, dst)
            _fsync_dir(dst.parent)
            return dst

        committed = await asyncio.to_thread(finish)
        faults.reached("blob")
        return committed

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ingest = root / "ingest"

    def open(self) -> list[str]:
        """Create the layout and sweep interrupted ingests; returns what was swept."""
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.ingest.mkdir(parents=True, exist_ok=True)
        swept = []
        for f in self.ingest.iterdir():
            f.unlink(missing_ok=True)
            swept.append(f.name)
        return swept

    def path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algo / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def writer(self, digest: str, size: int) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    async def put(self, digest: str, data: bytes) -> None:
        """Store a small blob already in memory (manifests, configs)."""
        if self.has(digest):
            return
        w = self.writer(digest, len(data))
        try:
            await w.write(data)
            await w.commit()
        except BaseException:
            w.abort()
            raise

    def delete(self, digest: str) -> int:
        p = self.path(digest)
        try:
            size = p.stat().st_size
            p.unlink()
            return size
        except FileNotFoundError:
            return 0

    def digests(self) -> list[str]:
        out = []
        base = self.root / "blobs"
        for algo in base.iterdir() if base.exists() else ():
            out += [f"{algo.name}:{f.name}" for f in algo.iterdir()]
        return out
