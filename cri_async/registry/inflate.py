"""Decompression and the diff-id hash of a layer blob, on a thread ahead of the unpack.

``Inflater`` reads a layer blob (gzip, zstd or uncompressed) and hands its decompressed
content out through ``read``, in bounded chunks, while hashing it: the hash is the layer's
diff id once the stream is read to the end.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import IO

import zstandard

__all__ = ["CHUNK", "Cancelled", "Inflater", "gunzip"]

CHUNK = 256 * 1024  # decompressed bytes per queued chunk (and compressed bytes per read)
_AHEAD = 4  # chunks in flight between the two threads


class Cancelled(Exception):
    """The caller gave up on the work (its ``cancel`` event is set)."""


class Inflater:
    """Decompression and the diff-id hash on their own thread, ahead of the unpack.

    zlib, zstd and hashlib release the GIL, so this work runs on a second core while the
    caller's thread parses the tar and makes the files. A bounded queue keeps at most
    ``_AHEAD`` chunks of ``CHUNK`` bytes in flight (a decompression bomb is read in bounded
    chunks too). ``read`` hands the decompressed stream out in order, then ``b""``; an error
    of the decompressor (or of the blob's file) is raised by ``read``. ``hash`` covers
    everything decompressed, so it is the diff id once ``read`` has returned ``b""``.
    ``close`` stops the thread; it must be called before ``f`` is closed.

    ``meter`` sees the size of each chunk before it is queued (``registry.limits``): what it
    raises ends the stream there, so a bomb is never inflated past its limit. ``size`` counts
    the decompressed bytes. Once ``cancel`` is set, ``read`` raises ``Cancelled``.
    """

    def __init__(
        self,
        f: IO[bytes],
        compression: str,
        meter: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self._meter = meter
        self._cancel = cancel
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
                if self._meter is not None:
                    self._meter(len(chunk))
                self.size += len(chunk)
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
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("cancelled")
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
            return data + b"".join(iter(lambda: self.read(CHUNK), b""))
        data, self._rest = self._rest[:n], self._rest[n:]
        return data

    def drain(self) -> None:
        """Read to the end (tar padding after the end-of-archive marker is in the diff id)."""
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _chunks(f: IO[bytes], compression: str) -> Iterator[bytes]:
    """The decompressed content of ``f``, in chunks of at most ``CHUNK`` bytes."""
    if compression == "gzip":
        yield from gunzip(f)
        return
    src = (
        zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        if compression == "zstd"
        else f
    )
    while chunk := src.read(CHUNK):
        yield chunk


def gunzip(f: IO[bytes]) -> Iterator[bytes]:
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
                data = f.read(CHUNK)
                if not data:
                    return
                continue
            d = zlib.decompressobj(31)
            members += 1
        if not data:
            data = f.read(CHUNK)
            if not data:
                # Output zlib still holds (the last call stopped at max_length), else truncated.
                out = d.decompress(b"", CHUNK)
                if out:
                    yield out
                    continue
                if d.eof:
                    d = None
                    continue
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        out = d.decompress(data, CHUNK)
        if d.eof:
            data = d.unused_data
            d = None
        else:
            data = d.unconsumed_tail
        if out:
            yield out
