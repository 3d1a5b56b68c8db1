"""Reading a partial layer's files through its TOC, fetching only the chunks a read needs.

A read of a regular file finds the chunks that cover it and gets each one from, in order:
the store's chunk cache (by digest: a chunk any image already fetched is never fetched
again), the layer's partial blob (bytes fetched earlier, e.g. by background completion), or
the registry (one merged range request for all the chunks of the read that are missing). The
compressed bytes are kept in the partial blob, the decoded chunk is checked against its TOC
digest, kept in the chunk cache, and only then served. Bytes that do not decode to their
digest are dropped from the partial blob and fetched once more; if they are wrong again the
read fails with :class:`DigestMismatchError` (``EIO`` at the FUSE boundary) and one log line:
a chunk that does not match is never served.

Reads record the order in which files are first read (``.order``): the next background
completion of the layer fetches them first (:func:`priority_ranges`).

A read may be given a *deadline* (``time.monotonic()`` seconds): waiting for bytes another
thread is fetching and fetching them itself then both end by it, with a temporary
:class:`RegistryError`, so one read never takes longer than the time it was given. Decoded
chunks are also kept in memory (:class:`ChunkMemory`), so reading a large chunk piece by
piece decodes and verifies it once.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from layerfs.errors import DigestMismatchError, LayerFormatError, RegistryError, oserror
from layerfs.lazy.decode import decompress, verify, zeros
from layerfs.lazy.toc import Chunk, EntryType, Toc, TocEntry
from layerfs.store.partial import LazyStore, PartialBlob, merge, subtract

log = logging.getLogger(__name__)

# ranges of the blob and a deadline (time.monotonic(), None: the fetcher's own bound) -> bytes
Fetch = Callable[[list[tuple[int, int]], float | None], list[bytes]]
MEMORY_BUDGET = 64 << 20  # bytes of decoded chunks a layer reader keeps in memory
FILL_GAP = 64 << 10  # bytes between two ranges of one fetch that are fetched too (one request)


class ChunkMemory:
    """Verified chunk contents by digest, the most recently used ones up to *budget* bytes."""

    def __init__(self, budget: int = MEMORY_BUDGET) -> None:
        self.budget = budget
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.budget:
            return
        with self._lock:
            if digest in self._items:
                return
            self._items[digest] = data
            self._size += len(data)
            while self._size > self.budget:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)


class RangeFiller:
    """Fills a partial blob from *fetch*; a range being fetched is never fetched twice.

    *fetch* reads byte ranges of the blob (a :class:`~layerfs.registry.ranges.RangeClient`
    bound to it) and raises :class:`RegistryError` after its bounded time, or by the
    deadline it is given. Thread-safe.
    """

    def __init__(self, partial: PartialBlob, fetch: Fetch) -> None:
        self.partial = partial
        self._fetch = fetch
        self._lock = threading.Lock()
        self._inflight: dict[tuple[int, int], threading.Event] = {}

    def ensure_ranges(
        self, ranges: Iterable[tuple[int, int]], deadline: float | None = None
    ) -> None:
        """Make the partial blob hold every byte of *ranges*, fetching what is missing.

        Holes of at most :data:`FILL_GAP` bytes between them are fetched too: the chunks of
        one file lie a few bytes apart in a blob, and one request costs less than one round
        trip per chunk. Ranges another thread is fetching are waited for, then checked
        again. With a *deadline*, raises a temporary :class:`RegistryError` once it has
        passed.
        """
        spans = _fill_gaps(merge(list(ranges)), FILL_GAP)
        while True:
            mine: list[tuple[int, int]] = []
            waits: list[threading.Event] = []
            with self._lock:
                for start, end in spans:
                    for piece in self.partial.missing(start, end):
                        busy = [e for r, e in self._inflight.items() if _overlaps(r, piece)]
                        if busy:
                            waits.extend(busy)
                        else:
                            mine.append(piece)
                            self._inflight[piece] = threading.Event()
            if mine:
                try:
                    for piece, data in zip(mine, self._fetch(mine, deadline), strict=True):
                        self.partial.write(piece[0], data)
                finally:
                    with self._lock:
                        for piece in mine:
                            self._inflight.pop(piece).set()
            if not waits:
                if not mine:
                    return
                continue
            for event in waits:
                left = None if deadline is None else deadline - time.monotonic()
                if not event.wait(left if left is None else max(0.0, left)):
                    raise RegistryError(
                        f"blob {self.partial.descriptor.digest}: the bytes another read is "
                        "fetching did not arrive in time",
                        temporary=True,
                    )


class LazyLayer:
    """One partial layer with a TOC: file reads by in-layer path; thread-safe."""

    def __init__(
        self,
        lazy: LazyStore,
        filler: RangeFiller,
        toc: Toc,
        record: bool = True,
        memory: ChunkMemory | None = None,
    ) -> None:
        self.lazy = lazy
        self.filler = filler
        self.partial = filler.partial
        self.toc = toc
        self.memory = memory or ChunkMemory()
        self._record = record
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @property
    def digest(self) -> str:
        return self.partial.descriptor.digest

    def entry(self, path: str) -> TocEntry:
        """The entry at *path* (a hard link resolved to its target); ``ENOENT`` if none."""
        found = self.toc.get(path)
        if found is None:
            raise oserror(errno.ENOENT, path)
        if found.type is EntryType.HARDLINK:
            target = self.toc.get(found.hardlink)
            if target is None:
                raise oserror(errno.ENOENT, path)
            return target
        return found

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to *size* bytes of the regular file *path* from *offset* (short at its end)."""
        entry = self.entry(path)
        if entry.type is not EntryType.REG:
            raise oserror(errno.EISDIR if entry.type is EntryType.DIR else errno.EINVAL, path)
        self.note(entry.path)
        return self.read_entry(entry, offset, size)

    def read_entry(
        self,
        entry: TocEntry,
        offset: int,
        size: int,
        deadline: float | None = None,
        ahead: int = 0,
    ) -> bytes:
        """Up to *size* bytes of the regular file *entry* from *offset* (short at its end),
        fetching what is missing by *deadline* (see the module docstring). The compressed
        bytes of the file's next *ahead* bytes are fetched in the same request when they
        are missing (a file is mostly read on), but not decoded yet."""
        end = min(entry.size, offset + size)
        if offset >= end:
            return b""
        wanted = [c for c in entry.chunks if c.offset < end and c.offset + c.size > offset]
        if ahead:
            more = [c for c in entry.chunks if end <= c.offset < end + ahead and not c.zeros]
            if more and self.partial.missing(more[0].start, more[-1].end):
                self.filler.ensure_ranges(
                    [(c.start, c.end) for c in (*wanted, *more) if not c.zeros], deadline
                )
        contents = self.chunk_contents(entry, wanted, deadline)
        first = wanted[0].offset
        if len(contents) == 1:
            return contents[0][offset - first : end - first]
        return b"".join(contents)[offset - first : end - first]

    def read_file(self, path: str) -> bytes:
        """The whole content of the regular file *path*."""
        entry = self.entry(path)
        return self.read(path, 0, entry.size)

    def chunk_contents(
        self, entry: TocEntry, chunks: list[Chunk], deadline: float | None = None
    ) -> list[bytes]:
        """The verified content of *chunks* of *entry*, fetching what is missing in one go."""
        found: dict[int, bytes] = {}
        for chunk in chunks:
            cached = self.memory.get(chunk.digest)
            if cached is None and chunk.zeros:
                cached = verify(chunk, zeros(chunk), entry.path)
                self.memory.put(chunk.digest, cached)
            elif cached is None:
                cached = self.lazy.chunks.get(chunk.digest)
                if cached is not None:
                    self.memory.put(chunk.digest, cached)
            if cached is not None:
                found[chunk.offset] = cached
        needed = [c for c in chunks if c.offset not in found]
        for attempt in range(2):
            if not needed:
                break
            self.filler.ensure_ranges([(c.start, c.end) for c in needed], deadline)
            bad: list[Chunk] = []
            for chunk in needed:
                try:
                    found[chunk.offset] = self._decode(entry, chunk)
                except (DigestMismatchError, LayerFormatError) as exc:
                    self.partial.drop(chunk.start, chunk.end)
                    if attempt:
                        log.error("layer %s: %s: %s", self.digest, entry.path, exc)
                        raise
                    bad.append(chunk)
            needed = bad
        return [found[c.offset] for c in chunks]

    def _decode(self, entry: TocEntry, chunk: Chunk) -> bytes:
        """The verified content of *chunk* from the partial blob, kept in the chunk cache."""
        raw = self.partial.read(chunk.start, chunk.end)
        content = verify(chunk, decompress(self.toc.format, chunk, raw), entry.path)
        self.lazy.chunks.put(chunk.digest, content)
        self.memory.put(chunk.digest, content)
        return content

    def note(self, path: str) -> None:
        """Record that *path* was read (once per reader): the layer's read order."""
        if not self._record:
            return
        with self._lock:
            if path in self._seen:
                return
            self._seen.add(path)
        self.lazy.note_read(self.digest, path)


def _fill_gaps(spans: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Merged *spans* with the holes of at most *gap* bytes between them filled."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and start - out[-1][1] <= gap:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def priority_ranges(toc: Toc | None, read_order: list[str], size: int) -> list[tuple[int, int]]:
    """Byte ranges of a layer blob in the order background completion fetches them.

    First the chunks of eStargz's prioritised files and of the files read the last time a
    container used the layer (in that order), then every other byte of the blob from start
    to end. Together they cover the blob exactly once.
    """
    first: list[tuple[int, int]] = []
    if toc is not None:
        for path in [*toc.prioritized, *read_order]:
            entry = toc.get(path)
            if entry is not None and entry.type is EntryType.HARDLINK:
                entry = toc.get(entry.hardlink)
            if entry is not None:
                first.extend((c.start, c.end) for c in entry.chunks if not c.zeros)
    out: list[tuple[int, int]] = []
    covered: list[tuple[int, int]] = []
    for span in first:
        for piece in subtract(span[0], span[1], covered):
            out.append(piece)
            covered = merge([*covered, piece])
    out.extend(subtract(0, size, covered))
    return out
