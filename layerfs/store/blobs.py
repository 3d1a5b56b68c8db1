"""Content-addressed blobs under ``blobs/sha256/<hex>``: atomic, verified, idempotent.

A blob is written to a temporary file in the store's ``tmp/`` directory (same filesystem),
hashed while it streams in, fsynced, checked against the expected digest and size, and only
then renamed to its final name, so a reader never sees a partial blob and a crash leaves
nothing but a temporary file that the next writer sweeps away. Readers verify too: the stream
returned by :meth:`BlobStore.open` raises :class:`DigestMismatchError` at its end if the bytes
on disk no longer hash to their name.

The class is not locked itself; :class:`layerfs.store.store.Store` holds the store's write
lock around every call that writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from layerfs.errors import DigestMismatchError, NotFoundError, StoreError
from layerfs.progress import Task
from layerfs.store.refs import DIGEST_RE
from layerfs.types import Digest

CHUNK = 1 << 20  # bytes per read while streaming
ALGORITHM = "sha256"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a put or stat returns: the blob's digest and size in bytes."""

    digest: Digest
    size: int


def digest_bytes(data: bytes) -> Digest:
    """``sha256:<hex>`` of *data*."""
    return Digest(f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}")


def check_digest(digest: str) -> Digest:
    """Validate *digest* as ``sha256:<64 lower-case hex>``; :class:`StoreError` otherwise."""
    if not DIGEST_RE.match(digest):
        raise StoreError(f"unsupported or malformed digest {digest!r}")
    return Digest(digest)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in *path* durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: Path, tmp_dir: Path) -> Iterator[BinaryIO]:
    """Write *target* through a temporary file in *tmp_dir*, fsync'ed and renamed into place.

    A reader sees the old file or the whole new one, never a part; on error nothing is left.
    """
    fd, name = tempfile.mkstemp(prefix=".layerfs-", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, 0o644)
        os.rename(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    fsync_dir(target.parent)


class VerifyingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through and checks it at end of file."""

    def __init__(self, raw: BinaryIO, digest: Digest, size: int) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._size = size
        self._hash = hashlib.sha256()
        self._seen = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        n = len(data)
        view[:n] = data
        self._hash.update(data)
        self._seen += n
        if n == 0 and len(view) > 0:
            self._verify()
        return n

    def _verify(self) -> None:
        if self._checked:
            return
        self._checked = True
        actual = f"{ALGORITHM}:{self._hash.hexdigest()}"
        if self._seen != self._size or actual != self._digest:
            raise DigestMismatchError(
                f"blob {self._digest}: read {self._seen} bytes hashing to {actual}, "
                f"expected {self._size} bytes"
            )

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class BlobStore:
    """The ``blobs/sha256`` directory of an OCI image layout, staging through *tmp_dir*."""

    def __init__(self, blobs_dir: Path, tmp_dir: Path) -> None:
        self.dir = blobs_dir / ALGORITHM
        self.tmp_dir = tmp_dir

    def path(self, digest: str) -> Path:
        """Where the blob *digest* lives (whether or not it exists)."""
        return self.dir / check_digest(digest).split(":", 1)[1]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def stat(self, digest: str) -> BlobInfo:
        """Digest and size of a stored blob; :class:`NotFoundError` if it is missing."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob {digest} not found") from exc
        return BlobInfo(Digest(digest), st.st_size)

    def open(self, digest: str) -> BinaryIO:
        """A verifying stream over the blob (see :class:`VerifyingReader`)."""
        try:
            raw = self.path(digest).open("rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob {digest} not found") from exc
        size = os.fstat(raw.fileno()).st_size
        reader = VerifyingReader(raw, Digest(digest), size)
        return io.BufferedReader(reader, CHUNK)

    def get(self, digest: str) -> bytes:
        """The whole blob, verified (meant for manifests and configs)."""
        with self.open(digest) as stream:
            return stream.read()

    def put_bytes(self, data: bytes, expected: str | None = None) -> BlobInfo:
        """Store *data*; see :meth:`put`."""
        return self.put(io.BytesIO(data), expected, len(data) if expected else None)

    def put(
        self,
        stream: BinaryIO,
        expected: str | None = None,
        size: int | None = None,
        progress: Task | None = None,
    ) -> BlobInfo:
        """Copy *stream* into the store and return its digest and size.

        With *expected* (and *size*) given, the data must hash to it or
        :class:`DigestMismatchError` is raised and nothing is stored; if that blob is already
        present the stream is not read at all (idempotent put).
        """
        if expected is not None:
            expected = check_digest(expected)
            if self.exists(expected):
                return self.stat(expected)
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._staging() as (tmp, handle):
            digest, written = _copy_hashing(stream, handle, progress)
            if expected is not None and (digest != expected or (size not in (None, written))):
                raise DigestMismatchError(
                    f"blob {expected}: received {written} bytes hashing to {digest}"
                    + (f", expected {size} bytes" if size is not None else "")
                )
        self._commit(tmp, digest)
        return BlobInfo(digest, written)

    def adopt(self, path: Path, expected: str | None = None) -> BlobInfo:
        """Move a finished file (already in the store's tmp dir) in as a blob, after hashing it."""
        with path.open("rb") as handle:
            digest, size = _copy_hashing(handle, None, None)
            os.fsync(handle.fileno())
        if expected is not None and digest != expected:
            path.unlink()
            raise DigestMismatchError(f"blob {expected}: file {path} hashes to {digest}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._commit(path, digest)
        return BlobInfo(digest, size)

    def delete(self, digest: str) -> None:
        """Remove a blob; missing blobs are not an error (gc may race with nothing but itself)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def list(self) -> Iterator[Digest]:
        """Every stored blob's digest, in name order; stray files are skipped."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            digest = f"{ALGORITHM}:{name}"
            if DIGEST_RE.match(digest):
                yield Digest(digest)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[tuple[Path, BinaryIO]]:
        fd, name = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield tmp, handle
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _commit(self, tmp: Path, digest: Digest) -> None:
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.path(digest))
        fsync_dir(self.dir)


def _copy_hashing(src: BinaryIO, dst: BinaryIO | None, progress: Task | None) -> tuple[Digest, int]:
    hasher = hashlib.sha256()
    total = 0
    while chunk := src.read(CHUNK):
        hasher.update(chunk)
        if dst is not None:
            dst.write(chunk)
        total += len(chunk)
        if progress is not None:
            progress.advance(len(chunk))
    return Digest(f"{ALGORITHM}:{hasher.hexdigest()}"), total
