"""Byte streams that hash, count and bound what flows through them.

A layer is read and written in one pass: the blob digest, the diff_id and the byte limits are
all computed on the way, so no member and no layer is ever held in memory as a whole.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from typing import BinaryIO

from layerfs.errors import LayerFormatError
from layerfs.progress import Task
from layerfs.types import Digest

CHUNK = 1 << 20  # bytes: read/write unit for file data and compressed streams


def digest_of(h: hashlib._Hash) -> Digest:
    """Format a finished sha256 as ``sha256:<hex>``."""
    return Digest("sha256:" + h.hexdigest())


class HashingReader(io.RawIOBase):
    """Reads from *inner*, hashing and counting every byte; fails once *limit* is passed.

    ``progress`` advances by the size of each chunk read, so a caller can drive a progress
    bar without polling.
    """

    def __init__(
        self,
        inner: BinaryIO,
        *,
        limit: int | None = None,
        what: str = "layer",
        progress: Task | None = None,
        hashing: bool = True,
    ) -> None:
        super().__init__()
        self.hashing = hashing
        self._inner = inner
        self._limit = limit
        self._what = what
        self._progress = progress
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._account(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def _account(self, data: bytes) -> None:
        self.count += len(data)
        if self._limit is not None and self.count > self._limit:
            raise LayerFormatError(
                f"{self._what} is larger than the limit of {self._limit} bytes"
                " (decompression bomb?)"
            )
        if self.hashing:
            self.hash.update(data)
        if self._progress is not None:
            self._progress.advance(len(data))

    def drain(self) -> None:
        """Read to the end, so that the hash covers the whole stream."""
        while self.read(CHUNK):
            pass


class HashingWriter(io.RawIOBase):
    """Writes to *inner*, hashing and counting every byte (compressors write into this)."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        n = len(data)
        if n:
            self.hash.update(data)
            self.count += n
            self._inner.write(data)
        return n

    def flush(self) -> None:
        self._inner.flush()


class ForwardReader:
    """A forward-only "seekable" reader over a stream, for ``tarfile``'s random-access mode.

    ``tarfile``'s own stream mode re-slices its whole read buffer on every 512-byte header
    read; this keeps one buffer and an index, hands large reads straight through, and
    implements ``seek`` by reading forward (a backward seek is a bug and raises).
    """

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._buf = b""
        self._at = 0  # index of the next unread byte in _buf
        self._pos = 0  # stream position of the next unread byte

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        avail = len(self._buf) - self._at
        if size < 0:
            data = self._buf[self._at :] + self._inner.read()
            self._buf, self._at = b"", 0
        elif size <= avail:
            data = self._buf[self._at : self._at + size]
            self._at += size
        elif size >= CHUNK:
            data = self._buf[self._at :] + _read_full(self._inner, size - avail)
            self._buf, self._at = b"", 0
        else:
            more = _read_full(self._inner, max(CHUNK, size - avail))
            self._buf = self._buf[self._at :] + more
            data, self._at = self._buf[:size], size
        self._pos += len(data)
        return data

    def at_end(self) -> bool:
        """Whether the stream has no byte left (reads ahead, but never moves the position)."""
        if self._at < len(self._buf):
            return False
        self._buf, self._at = _read_full(self._inner, CHUNK), 0
        return not self._buf

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise ValueError("ForwardReader only seeks forward")
        while self._pos < pos:
            if not self.read(min(pos - self._pos, CHUNK)):
                break
        return self._pos


def _read_full(inner: BinaryIO, size: int) -> bytes:
    """Up to *size* bytes, fewer only at the end of the stream."""
    data = inner.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = inner.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class BackgroundWriter:
    """Hands chunks to a thread that writes them to *inner*: hashing and compressing a layer
    then overlap with reading files and building tar headers, which hold the GIL.

    ``sha256`` and ``zstandard`` release the GIL while they work, so on two cores the
    producer hardly waits. At most *depth* chunks are in flight; a failure in the thread is
    raised from the next :meth:`write` or from :meth:`close`. Chunks must not be changed
    after they are handed over.
    """

    def __init__(self, inner: HashingWriter, depth: int = 8) -> None:
        self._inner = inner
        self._queue: queue.Queue[bytes | bytearray | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="layer-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray) -> None:
        self._check()
        self._queue.put(data)

    def close(self) -> None:
        """Write what is queued, stop the thread and raise what it met, if anything."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def abandon(self) -> None:
        """Stop without caring for the output (the caller is failing already)."""
        self._error = self._error or LayerFormatError("layer writing was abandoned")
        self._queue.put(None)  # the thread keeps taking chunks, so there will be room
        self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None:
                continue  # keep taking chunks so the producer never blocks on a full queue
            try:
                self._inner.write(data)
            except BaseException as exc:  # handed to the producer
                self._error = exc
