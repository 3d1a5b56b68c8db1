"""Partial layers: what the store keeps of a layer blob that is not local yet.

A lazily pulled image is in ``index.json`` like any other, with its manifest and config in
``blobs/``, but some of its layer blobs are not. For each such layer the store keeps, under
``ROOT/lazy/``::

    layers/<blob hex>.json   the layer's record: descriptor, TOC format, where it comes from
    layers/<blob hex>.toc    the TOC bytes, as verified against the descriptor's annotation
    blobs/<blob hex>.part    the blob's bytes fetched so far, at their offsets (sparse file)
    blobs/<blob hex>.ranges  which byte ranges of .part are present: "START END" lines
                             (and "- START END" for bytes found corrupt and dropped)
    chunks/sha256/<hex>      file content and chunks by digest, verified, shared by all layers
    order/<blob hex>         paths in the order a container first read them (one per line);
                             kept when the layer completes, for the next time it is pulled

Bytes are written to ``.part`` and fsync'ed before their range is appended to ``.ranges``, so
after a crash the ranges log never claims bytes that are not there, and a restart resumes with
what is present. When every byte is present the whole blob is verified against its digest and
moved into ``blobs/`` (:meth:`PartialBlob.finish`): from then on it is an ordinary layer. The
fetching itself (the network) lives outside the store: see :class:`RemoteBlobs`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from layerfs.errors import DigestMismatchError, NotFoundError, StoreError
from layerfs.layer import LayerSource
from layerfs.lazy.formats import load_stored
from layerfs.lazy.toc import Toc, TocFormat
from layerfs.store.blobs import BlobStore, atomic_file, fsync_dir
from layerfs.store.oci import Descriptor, load_json
from layerfs.types import Digest

LAZY_DIR = "lazy"
HASH_CHUNK = 1 << 20  # bytes read at a time when verifying a finished blob


class RemoteBlobs(Protocol):
    """Completes partial layer blobs from where they came from (a registry), and reads them."""

    def complete(self, lazy: LazyStore, record: LazyRecord) -> None:
        """Fetch every missing byte of the partial blob of *record* into ``lazy.partial``
        (the store then verifies it with :meth:`PartialBlob.finish`)."""
        ...

    def layer_source(self, lazy: LazyStore, record: LazyRecord, local_dir: Path) -> LayerSource:
        """The partial layer *record* (which has a TOC) as a lower of a stack, its content
        fetched as it is read; *local_dir* is where the store unpacks it once complete."""
        ...


@dataclass(frozen=True, slots=True)
class LazyRecord:
    """What the store knows of a partial layer: its descriptor, format and source.

    ``toc_format`` is ``None`` for a layer without a TOC (fetched whole on first access);
    ``content_end`` is where its TOC begins; ``source`` is the ``registry/repository`` it was
    pulled from and ``insecure`` whether plain HTTP was used; ``prefetch`` whether the rest
    of the layer is fetched in the background once a container uses it.
    """

    descriptor: Descriptor
    toc_format: str | None
    content_end: int
    source: str
    insecure: bool = False
    prefetch: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "descriptor": self.descriptor.to_json(),
            "tocFormat": self.toc_format,
            "contentEnd": self.content_end,
            "source": self.source,
            "insecure": self.insecure,
            "prefetch": self.prefetch,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], what: str) -> LazyRecord:
        try:
            return cls(
                Descriptor.from_json(doc["descriptor"], what),
                doc["tocFormat"],
                int(doc["contentEnd"]),
                str(doc["source"]),
                bool(doc.get("insecure", False)),
                bool(doc.get("prefetch", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{what}: malformed lazy layer record") from exc


def merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-touching intervals covering *spans*."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def subtract(start: int, end: int, have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``start..end`` that no interval of *have* (merged) covers."""
    out = []
    pos = start
    for h_start, h_end in have:
        if h_end <= pos:
            continue
        if h_start >= end:
            break
        if h_start > pos:
            out.append((pos, h_start))
        pos = max(pos, h_end)
        if pos >= end:
            break
    if pos < end:
        out.append((pos, end))
    return out


def _without(span: tuple[int, int], cut: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of *span* outside *cut*."""
    left, right = (span[0], min(span[1], cut[0])), (max(span[0], cut[1]), span[1])
    return [p for p in (left, right) if p[1] > p[0]]


class PartialBlob:
    """The fetched bytes of one blob and the log of which ranges they are; thread-safe.

    Several processes may fill the same blob (a mount and a ``pull``): writes of the same
    range write the same verified-later bytes, and appends to the log are ``flock``-ed.
    """

    def __init__(self, directory: Path, descriptor: Descriptor, final: Path) -> None:
        self.descriptor = descriptor
        hex_digest = descriptor.digest.split(":", 1)[1]
        self.data_path = directory / f"{hex_digest}.part"
        self.log_path = directory / f"{hex_digest}.ranges"
        self.final_path = final  # where the verified blob lives once it is complete
        self._lock = threading.Lock()
        self._have: list[tuple[int, int]] = []
        self._log_size = -1

    @property
    def size(self) -> int:
        return self.descriptor.size

    def _refresh(self) -> None:
        """Re-read the ranges log if another writer appended to it. Call under the lock.

        Once the blob is complete and verified in ``blobs/``, every byte is present.
        """
        if self.final_path.is_file():
            self._have, self._log_size = [(0, self.size)], -1
            return
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            self._have, self._log_size = [], 0
            return
        if st.st_size == self._log_size:
            return
        have: list[tuple[int, int]] = []
        text = self.log_path.read_text(errors="replace")
        for line in text.splitlines():
            parts = line.split()
            dropped = len(parts) == 3 and parts[0] == "-"
            numbers = parts[1:] if dropped else parts
            if len(numbers) != 2 or not all(p.isdigit() for p in numbers):
                continue
            start, end = int(numbers[0]), int(numbers[1])
            if not 0 <= start < end <= self.size:
                continue
            if dropped:
                have = [p for s, e in have for p in _without((s, e), (start, end))]
            else:
                have = merge([*have, (start, end)])
        self._have, self._log_size = have, len(text.encode())

    def present(self) -> list[tuple[int, int]]:
        """The ranges present, merged."""
        with self._lock:
            self._refresh()
            return list(self._have)

    def present_bytes(self) -> int:
        return sum(end - start for start, end in self.present())

    def missing(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """The ranges of ``start..end`` (default: the whole blob) not present yet."""
        with self._lock:
            self._refresh()
            return subtract(start, self.size if end is None else end, self._have)

    def complete(self) -> bool:
        return not self.missing()

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start..end``, which must be present (:class:`NotFoundError` otherwise)."""
        if self.missing(start, end):
            raise NotFoundError(f"blob {self.descriptor.digest}: {start}-{end} not fetched")
        try:
            handle = open(self.data_path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            handle = open(self.final_path, "rb")  # noqa: SIM115 (finished meanwhile)
        with handle:
            return os.pread(handle.fileno(), end - start, start)

    def write(self, start: int, data: bytes) -> None:
        """Store fetched bytes at *start*: data first (fsync'ed), then the log line.

        Nothing is written once the blob is complete in ``blobs/``.
        """
        if self.final_path.is_file():
            return
        end = start + len(data)
        if not 0 <= start < end <= self.size:
            raise StoreError(f"blob {self.descriptor.digest}: range {start}-{end} outside it")
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.pwrite(fd, view[written:], start + written)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock, self._log_locked() as log:
            log.write(f"{start} {end}\n".encode())
            log.flush()
            os.fsync(log.fileno())
            self._log_size = -1  # re-read on the next query

    def drop(self, start: int, end: int) -> None:
        """Forget the bytes ``start..end`` (found corrupt): they are fetched again when needed."""
        with self._lock, self._log_locked() as log:
            log.write(f"- {start} {end}\n".encode())
            log.flush()
            os.fsync(log.fileno())
            self._log_size = -1

    @contextlib.contextmanager
    def _log_locked(self) -> Iterator[Any]:
        with open(self.log_path, "ab") as log:
            fcntl.flock(log.fileno(), fcntl.LOCK_EX)
            try:
                yield log
            finally:
                fcntl.flock(log.fileno(), fcntl.LOCK_UN)

    def finish(self, blobs: BlobStore) -> None:
        """Verify the complete blob against its digest and move it into *blobs*.

        A mismatch (the registry sent bytes that are not this blob) deletes the partial
        data, so the next attempt fetches it again, and raises :class:`DigestMismatchError`.
        """
        if blobs.exists(self.descriptor.digest):
            self.discard()
            return
        if self.missing():
            raise StoreError(f"blob {self.descriptor.digest} is not complete")
        hasher = hashlib.sha256()
        with open(self.data_path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                hasher.update(chunk)
        actual = f"sha256:{hasher.hexdigest()}"
        if actual != self.descriptor.digest:
            self.discard()
            raise DigestMismatchError(
                f"blob {self.descriptor.digest}: fetched bytes hash to {actual}"
            )
        tmp = blobs.tmp_dir / f"partial-{self.data_path.name}"
        os.link(self.data_path, tmp)
        try:
            blobs.adopt(tmp, self.descriptor.digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.discard()

    def discard(self) -> None:
        """Forget every fetched byte of this blob."""
        with self._lock:
            for path in (self.log_path, self.data_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._have, self._log_size = [], -1


class ChunkCache:
    """File content and chunks by digest (``chunks/sha256/<hex>``), verified both ways.

    :meth:`put` stores only bytes that hash to their digest; :meth:`get` returns ``None`` for
    a missing entry and also for one whose bytes no longer hash to it (it is then removed).
    """

    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self.dir = directory / "sha256"
        self.tmp_dir = tmp_dir

    def _path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise StoreError(f"unsupported chunk digest {digest!r}")
        return self.dir / hex_digest

    def get(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return data

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def open(self, digest: str, size: int) -> int | None:
        """A read-only descriptor of the content cached as *digest*, or ``None`` when there
        is none of *size* bytes. Not hashed again: entries are verified when they are put,
        and a reader of a whole file hands its descriptor on (passthrough)."""
        try:
            fd = os.open(self._path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_size != size:
            os.close(fd)
            return None
        return fd

    def put_pieces(self, digest: str, pieces: Iterable[bytes]) -> None:
        """Store the concatenation of *pieces* as *digest* if it hashes to it (a whole file
        from its verified chunks); :class:`DigestMismatchError` otherwise."""
        path = self._path(digest)
        if path.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        with atomic_file(path, self.tmp_dir) as out:
            for piece in pieces:
                hasher.update(piece)
                out.write(piece)
            if f"sha256:{hasher.hexdigest()}" != digest:
                raise DigestMismatchError(f"file {digest}: chunks do not hash to it")

    def put(self, digest: str, data: bytes) -> None:
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise DigestMismatchError(f"chunk {digest}: content does not hash to it")
        path = self._path(digest)
        if path.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, self.tmp_dir) as out:
            out.write(data)

    def list(self) -> list[Digest]:
        try:
            return [Digest(f"sha256:{n}") for n in sorted(os.listdir(self.dir)) if len(n) == 64]
        except FileNotFoundError:
            return []

    def delete(self, digest: str) -> int:
        path = self._path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size


class LazyStore:
    """The ``lazy/`` directory of a store: records, TOCs, read orders, partial blobs, chunks."""

    def __init__(self, root: Path, tmp_dir: Path, blobs: BlobStore) -> None:
        self.root = root / LAZY_DIR
        self.blobs = blobs
        self.layers_dir = self.root / "layers"
        self.order_dir = self.root / "order"
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = tmp_dir
        self.chunks = ChunkCache(self.root / "chunks", tmp_dir)
        self._partials: dict[str, PartialBlob] = {}
        self._lock = threading.Lock()

    def _file(self, digest: str, suffix: str) -> Path:
        return self.layers_dir / f"{digest.split(':', 1)[1]}{suffix}"

    def add(self, record: LazyRecord, toc: bytes | None) -> None:
        """Record a partial layer (its TOC first, then the record: the record means ready)."""
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        digest = record.descriptor.digest
        if toc is not None:
            with atomic_file(self._file(digest, ".toc"), self.tmp_dir) as out:
                out.write(toc)
        with atomic_file(self._file(digest, ".json"), self.tmp_dir) as out:
            out.write(json.dumps(record.to_json(), indent=1).encode())

    def record(self, digest: str) -> LazyRecord | None:
        """The record of a partial layer, or ``None`` when the store has none for it."""
        path = self._file(digest, ".json")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return LazyRecord.from_json(load_json(data, str(path)), str(path))

    def toc_bytes(self, digest: str) -> bytes:
        try:
            return self._file(digest, ".toc").read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"layer {digest}: no TOC stored") from exc

    def records(self) -> list[LazyRecord]:
        try:
            names = sorted(os.listdir(self.layers_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.endswith(".json") and len(name) == 69:
                record = self.record(f"sha256:{name[:64]}")
                if record is not None:
                    found.append(record)
        return found

    def partial(self, descriptor: Descriptor) -> PartialBlob:
        """The (one per store object) :class:`PartialBlob` of a layer blob."""
        with self._lock:
            found = self._partials.get(descriptor.digest)
            if found is None:
                found = PartialBlob(self.blobs_dir, descriptor, self.blobs.path(descriptor.digest))
                self._partials[descriptor.digest] = found
            return found

    def toc(self, record: LazyRecord) -> Toc | None:
        """The parsed TOC of a partial layer (verified again), ``None`` for a layer without."""
        if record.toc_format is None:
            return None
        desc = record.descriptor
        fmt = TocFormat(record.toc_format)
        data = self.toc_bytes(desc.digest)
        return load_stored(fmt, desc.annotations, desc.size, record.content_end, data)

    def chunk_digests(self, record: LazyRecord) -> set[str]:
        """Digests of every chunk and whole file the layer's TOC names (none for a layer
        without a TOC): what the chunk cache may hold for it."""
        toc = self.toc(record)
        if toc is None:
            return set()
        files = {e.digest for e in toc.entries if e.digest is not None}
        return files | {c.digest for _, c in toc.chunks()}

    def read_order(self, digest: str) -> list[str]:
        """Paths in the order a container read them the last times (first reads first)."""
        try:
            path = self.order_dir / digest.split(":", 1)[1]
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return list(dict.fromkeys(line for line in lines if line.startswith("/")))

    def note_read(self, digest: str, path: str) -> None:
        """Append *path* to the layer's read order (the caller notes each path once)."""
        if "\n" in path:
            return
        self.order_dir.mkdir(parents=True, exist_ok=True)
        with open(self.order_dir / digest.split(":", 1)[1], "a") as out:
            out.write(path + "\n")

    def forget(self, digest: str) -> None:
        """Drop everything kept for a layer (its blob is local now, or nothing needs it)."""
        for suffix in (".json", ".toc"):
            with contextlib.suppress(FileNotFoundError):
                self._file(digest, suffix).unlink()
        with self._lock:
            partial = self._partials.pop(digest, None)
        if partial is not None:
            partial.discard()
        else:
            for suffix in (".part", ".ranges"):
                with contextlib.suppress(FileNotFoundError):
                    (self.blobs_dir / f"{digest.split(':', 1)[1]}{suffix}").unlink()
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(self.layers_dir)
