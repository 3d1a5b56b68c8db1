"""One table-of-contents model for the lazily readable layer formats (eStargz, zstd:chunked).

A TOC lists every entry of a layer tar with its metadata and, for regular files, the
**chunks** its content is made of: where each chunk's compressed bytes are in the blob
(``start``/``end``), where its bytes go in the file (``offset``/``size``) and the digest that
checks them. The parsers (:mod:`layerfs.lazy.estargz`, :mod:`layerfs.lazy.zstdchunked`) turn
a format's JSON entries into :class:`RawEntry` values; :func:`build_toc` checks them all and
builds the :class:`Toc`. A hostile TOC (a path escaping the root, a chunk outside the blob or
past its file, absurd sizes, a hard link to nowhere) raises one :class:`LayerFormatError`
naming the entry, and nothing is built.

Paths are in-layer paths: absolute, ``/``-separated, normalised (``/etc/passwd``; the layer
root is ``/``). Whiteout entries (``.wh.NAME``) are kept as the layer tar has them.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime
import enum
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from layerfs.errors import LayerFormatError, UnsafeLayerError
from layerfs.types import Digest

MAX_ENTRIES = 2_000_000  # entries of one TOC
MAX_FILE_SIZE = 1 << 44  # bytes (16 TiB): larger sizes are taken as hostile
MAX_CHUNK_SIZE = 1 << 30  # bytes of one chunk, compressed or not
MAX_PATH = 4096  # bytes of one path
MAX_XATTR_VALUE = 64 << 10  # bytes, the kernel's limit
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARKS = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})


class TocFormat(enum.Enum):
    """The layer formats whose TOC layerfs reads."""

    ESTARGZ = "estargz"
    ZSTD_CHUNKED = "zstd:chunked"


class EntryType(enum.Enum):
    """The type of a TOC entry (the names both formats use)."""

    DIR = "dir"
    REG = "reg"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a regular file's content and where its compressed bytes are.

    ``start``/``end`` delimit the compressed bytes in the blob (``end`` exclusive); they
    decompress to at least ``inner_offset + size`` bytes, of which ``size`` bytes from
    ``inner_offset`` on are this chunk. ``digest`` (``sha256:...``) checks those bytes (a TOC
    with a chunk that has none is refused); a ``zeros`` chunk is all zero bytes and needs no
    fetch.
    """

    offset: int  # in the file
    size: int
    start: int  # in the blob
    end: int
    digest: Digest
    inner_offset: int = 0
    zeros: bool = False


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One entry of a layer: metadata, link targets and, for regular files, chunks."""

    path: str
    type: EntryType
    mode: int  # permission bits (07777)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    link: str = ""  # symlink target, as written
    hardlink: str = ""  # in-layer path of the hard-link target
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0
    digest: Digest | None = None  # of the whole content (regular files)
    chunks: tuple[Chunk, ...] = ()

    @property
    def rdev(self) -> int:
        return os.makedev(self.devmajor, self.devminor)


@dataclass(frozen=True, slots=True)
class Toc:
    """A checked TOC: entries in TOC order and by path, and the prioritised paths.

    ``prioritized`` lists the regular files eStargz puts before its ``.prefetch.landmark``,
    in that order (empty otherwise). Landmark files, like every tar entry of the layer, are
    entries (``umoci unpack`` and non-lazy runtimes show them too).
    """

    format: TocFormat
    blob_size: int
    content_end: int  # where the TOC and footer begin: chunks lie before it
    entries: tuple[TocEntry, ...]
    prioritized: tuple[str, ...] = ()
    by_path: Mapping[str, TocEntry] = field(default_factory=dict, compare=False, repr=False)

    def get(self, path: str) -> TocEntry | None:
        return self.by_path.get(path)

    def chunks(self) -> Iterable[tuple[TocEntry, Chunk]]:
        """Every chunk of every regular file, in TOC order."""
        for entry in self.entries:
            for chunk in entry.chunks:
                yield entry, chunk


# -- raw entries, as the parsers produce them ---------------------------------------------------


@dataclass(slots=True)
class RawChunk:
    """A chunk before checking: compressed start, maybe its end, and its place in the file."""

    offset: int
    size: int  # 0: up to the end of the file
    start: int
    end: int | None
    digest: str | None
    inner_offset: int = 0
    zeros: bool = False


@dataclass(slots=True)
class RawEntry:
    """One TOC entry as the format writes it, plus its chunks (first chunk included)."""

    doc: dict[str, Any]
    chunks: list[RawChunk] = field(default_factory=list)


def content_starts(docs: Iterable[Mapping[str, Any]]) -> list[int]:
    """The sorted distinct ``offset`` values of TOC entries: where compressed pieces begin."""
    return sorted({o for d in docs if isinstance(o := d.get("offset"), int) and o > 0})


def next_start(starts: list[int], start: int, default: int) -> int:
    """The first of *starts* after *start* (where a piece beginning at *start* ends)."""
    following = bisect.bisect_right(starts, start)
    return starts[following] if following < len(starts) else default


def bad(what: str, reason: str) -> LayerFormatError:
    return LayerFormatError(f"TOC entry {what!r}: {reason}")


def toc_path(name: Any, what: str) -> str:
    """The in-layer path of TOC name *name* (``./a/b/`` -> ``/a/b``); refuses escapes."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_PATH or "\0" in name:
        raise bad(what, "missing or malformed name")
    if name.startswith("/"):
        raise UnsafeLayerError(f"TOC entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayerError(f"TOC entry {name!r}: path escapes the layer root")
    return "/" + "/".join(parts)


def int_field(doc: Mapping[str, Any], key: str, what: str, limit: int = MAX_FILE_SIZE) -> int:
    """A non-negative integer field (missing: 0) no larger than *limit*."""
    value = doc.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise bad(what, f"{key} {value!r} is not an integer in 0..{limit}")
    return value


def digest_field(doc: Mapping[str, Any], key: str, what: str) -> Digest | None:
    value = doc.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise bad(what, f"{key} {value!r} is not a sha256 digest")
    return Digest(value)


_FRACTION = re.compile(r"\.(\d+)")


def mtime_field(doc: Mapping[str, Any], what: str) -> int:
    """``modtime`` (RFC 3339) in nanoseconds since the epoch; missing or zero time: 0."""
    text = doc.get("modtime")
    if not text:
        return 0
    if not isinstance(text, str):
        raise bad(what, "modtime is not a string")
    # the fraction apart: datetime keeps microseconds, RFC 3339 times may carry nanoseconds
    fraction = _FRACTION.search(text)
    nanoseconds = int(fraction.group(1)[:9].ljust(9, "0")) if fraction else 0
    whole = text[: fraction.start()] + text[fraction.end() :] if fraction else text
    try:
        stamp = datetime.datetime.fromisoformat(whole.replace("Z", "+00:00"))
    except ValueError as exc:
        raise bad(what, f"modtime {text!r} is not RFC 3339") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    delta = stamp - epoch
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + nanoseconds


def xattrs_field(doc: Mapping[str, Any], what: str) -> dict[str, bytes]:
    """``xattrs``: name -> base64 value (both formats encode values so)."""
    raw = doc.get("xattrs") or {}
    if not isinstance(raw, dict):
        raise bad(what, "xattrs is not an object")
    out: dict[str, bytes] = {}
    for name, value in raw.items():
        if not isinstance(value, str) or not name or len(name) > 255:
            raise bad(what, f"malformed xattr {name!r}")
        try:
            data = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise bad(what, f"xattr {name!r} is not base64") from exc
        if len(data) > MAX_XATTR_VALUE:
            raise bad(what, f"xattr {name!r} is larger than {MAX_XATTR_VALUE} bytes")
        out[name] = data
    return out


# -- building and checking ----------------------------------------------------------------------


def build_toc(
    fmt: TocFormat,
    blob_size: int,
    raw: list[RawEntry],
    content_end: int | None = None,
    chunk_end: int | None = None,
) -> Toc:
    """Check *raw* entries and build the :class:`Toc` (see the module docstring).

    Every chunk must lie in ``[0, chunk_end)`` of the blob (default: *content_end*, which
    defaults to the blob size: the TOC and footer follow the content), inside its file, with
    the chunks of a file covering it exactly once in order.
    """
    if len(raw) > MAX_ENTRIES:
        raise LayerFormatError(f"TOC has {len(raw)} entries, more than {MAX_ENTRIES}")
    limit = blob_size if content_end is None else content_end
    chunks_limit = limit if chunk_end is None else chunk_end
    entries: list[TocEntry] = []
    by_path: dict[str, TocEntry] = {}
    prioritized: list[str] = []
    landmark_seen = False
    for item in raw:
        name = item.doc.get("name")
        path = toc_path(name, str(name))
        if path.lstrip("/") in LANDMARKS and not landmark_seen:
            landmark_seen = True
            if path.lstrip("/") == PREFETCH_LANDMARK:
                prioritized = [e.path for e in entries if e.type is EntryType.REG]
        entry = _entry(item, path, chunks_limit)
        if entry.type is EntryType.HARDLINK and entry.hardlink not in by_path:
            raise bad(path, f"hard link to {entry.hardlink!r}, which no earlier entry is")
        entries.append(entry)
        by_path[path] = entry
    if not landmark_seen:
        prioritized = []
    return Toc(fmt, blob_size, limit, tuple(entries), tuple(prioritized), by_path)


def _entry(item: RawEntry, path: str, limit: int) -> TocEntry:
    doc = item.doc
    try:
        kind = EntryType(doc.get("type"))
    except ValueError as exc:
        raise bad(path, f"unknown type {doc.get('type')!r}") from exc
    size = int_field(doc, "size", path) if kind is EntryType.REG else 0
    link = doc.get("linkName") or ""
    if not isinstance(link, str) or len(link.encode()) > MAX_PATH:
        raise bad(path, "malformed linkName")
    if kind in (EntryType.SYMLINK, EntryType.HARDLINK) and not link:
        raise bad(path, f"{kind.value} without a linkName")
    hardlink = toc_path(link, path) if kind is EntryType.HARDLINK else ""
    if kind is EntryType.HARDLINK and hardlink == path:
        raise bad(path, "hard link to itself")
    chunks = _chunks(item.chunks, path, size, limit) if kind is EntryType.REG else ()
    return TocEntry(
        path=path,
        type=kind,
        mode=int_field(doc, "mode", path, 0o7777777) & 0o7777,
        uid=int_field(doc, "uid", path, 0xFFFFFFFF),
        gid=int_field(doc, "gid", path, 0xFFFFFFFF),
        size=size,
        mtime_ns=mtime_field(doc, path),
        link=link if kind is EntryType.SYMLINK else "",
        hardlink=hardlink,
        xattrs=xattrs_field(doc, path),
        devmajor=int_field(doc, "devMajor", path, 0xFFFFFFFF),
        devminor=int_field(doc, "devMinor", path, 0xFFFFFFFF),
        digest=digest_field(doc, "digest", path),
        chunks=chunks,
    )


def _chunks(raw: list[RawChunk], path: str, size: int, limit: int) -> tuple[Chunk, ...]:
    if size == 0:
        return ()
    if not raw:
        raise bad(path, f"a {size}-byte file without content offsets")
    ordered = sorted(raw, key=lambda c: c.offset)
    out: list[Chunk] = []
    expect = 0
    for index, item in enumerate(ordered):
        chunk_size = item.size or size - item.offset
        if item.offset != expect or chunk_size <= 0 or item.offset + chunk_size > size:
            raise bad(path, f"chunk at file offset {item.offset} does not continue the file")
        if chunk_size > MAX_CHUNK_SIZE or item.inner_offset > MAX_CHUNK_SIZE:
            raise bad(path, f"chunk at file offset {item.offset} is absurdly large")
        end = item.end
        if end is None and index + 1 < len(ordered):
            end = ordered[index + 1].start
        if end is None or not 0 <= item.start < end <= limit or end - item.start > MAX_CHUNK_SIZE:
            raise bad(path, f"chunk at blob offset {item.start} lies outside the blob's content")
        if not item.digest or not DIGEST_RE.match(item.digest):
            raise bad(path, f"chunk at file offset {item.offset} has no sha256 digest")
        digest = Digest(item.digest)
        out.append(
            Chunk(item.offset, chunk_size, item.start, end, digest, item.inner_offset, item.zeros)
        )
        expect = item.offset + chunk_size
    if expect != size:
        raise bad(path, f"chunks cover {expect} of {size} bytes")
    return tuple(out)
