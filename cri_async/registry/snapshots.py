"""Layer snapshots: each layer unpacked once, into ``snapshots/<chain id>``.

A snapshot directory is one layer's diff, ready to be an overlayfs lower directory. It is
unpacked into a temporary directory (off the event loop, with decompression and the diff-id
hash on a second thread) and renamed into place only after the uncompressed content matched
the image config's diff id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import secrets
import shutil
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

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


_CHUNK = 256 * 1024  # decompressed bytes per queued chunk (and compressed bytes per read)
_AHEAD = 4  # chunks in flight between the two threads


class _Inflater:
    """Decompression and the diff-id hash on their own thread, ahead of the unpack.

    zlib, zstd and hashlib release the GIL, so this work runs on a second core while the
    caller's thread parses the tar and makes the files. A bounded queue keeps at most
    ``_AHEAD`` chunks of ``_CHUNK`` bytes in flight (a decompression bomb is read in bounded
    chunks too). ``read`` hands the decompressed stream out in order, then ``b""``; an error
    of the decompressor (or of the blob's file) is raised by ``read``. ``hash`` covers
    everything decompressed, so it is the diff id once ``read`` has returned ``b""``.
    ``close`` stops the thread; it must be called before ``f`` is closed.
    """

    def __init__(self, f: IO[bytes], compression: str) -> None:
        self.hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_AHEAD)
        self._stop = threading.Event()
        self._rest = b""  # what read() has not handed out of the last chunk
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(f, compression), name="layer-inflate", daemon=True
        )
        self._thread.start()

    def _run(self, f: IO[bytes], compression: str) -> None:
        try:
            for chunk in _chunks(f, compression):
                self.hash.update(chunk)
                if not self._put(chunk):
                    return
            self._put(None)
        except BaseException as e:  # handed to the reader, which raises it
            self._put(e)

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read(self, n: int = -1) -> bytes:
        if not self._rest:
            if self._done:
                return b""
            item = self._queue.get()
            if item is None:
                self._done = True
                return b""
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._rest = item
        if n < 0:
            data, self._rest = self._rest, b""
            return data + b"".join(iter(lambda: self.read(_CHUNK), b""))
        data, self._rest = self._rest[:n], self._rest[n:]
        return data

    def drain(self) -> None:
        """Read to the end (tar padding after the end-of-archive marker is in the diff id)."""
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _chunks(f: IO[bytes], compression: str) -> Iterator[bytes]:
    """The decompressed content of ``f``, in chunks of at most ``_CHUNK`` bytes."""
    if compression == "gzip":
        yield from _gunzip(f)
        return
    src = (
        zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        if compression == "zstd"
        else f
    )
    while chunk := src.read(_CHUNK):
        yield chunk


def _gunzip(f: IO[bytes]) -> Iterator[bytes]:
    """gzip's members, one after the other, as ``gzip.GzipFile`` reads them.

    zlib checks each member's header, CRC-32 and length (``wbits=31``). Zero bytes between
    members are padding; a stream that ends inside a member raises ``EOFError``, and anything
    else that is not a member ``zlib.error``.
    """
    d: zlib._Decompress | None = None  # inside a member
    data = b""  # compressed bytes d has not taken yet
    members = 0
    while True:
        if d is None:
            if members:
                data = data.lstrip(b"\0")
            if not data:
                data = f.read(_CHUNK)
                if not data:
                    return
                continue
            d = zlib.decompressobj(31)
            members += 1
        if not data:
            data = f.read(_CHUNK)
            if not data:
                # Output zlib still holds (the last call stopped at max_length), else truncated.
                out = d.decompress(b"", _CHUNK)
                if out:
                    yield out
                    continue
                if d.eof:
                    d = None
                    continue
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        out = d.decompress(data, _CHUNK)
        if d.eof:
            data = d.unused_data
            d = None
        else:
            data = d.unconsumed_tail
        if out:
            yield out


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
                stream = _Inflater(f, compression)
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
