"""zstd:chunked: a zstd layer whose file chunks are separate frames, with a TOC frame at its end.

Layout (containers/storage ``pkg/chunked``): the blob is a valid ``tar+zstd`` stream in which
every regular file's content is cut into chunks, each compressed as its own zstd frame; the
TOC (the "manifest", CRFS-style JSON compressed with zstd) sits in a skippable frame near the
end, followed by an optional tar-split frame and a footer frame. The layer descriptor carries
the annotations ``…zstd-chunked.manifest-position`` = ``offset:length:uncompressed:type``
(where the compressed TOC is) and ``…zstd-chunked.manifest-checksum`` (sha256 of those
compressed bytes), which verify the TOC; the TOC's ``digest``/``chunkDigest`` values then
verify the content. Both the older ``io.containers.`` and the newer ``io.github.containers.``
annotation prefixes are read.

A regular file's entry carries its first chunk (``offset``, ``chunkSize``, ``chunkDigest``)
and the end of its last one (``endOffset``); ``chunk`` entries that follow it add the others.
A chunk's compressed bytes run to the next chunk's ``offset``; the last one's to ``endOffset``
or, when the writer gives none (``ctr-remote --zstdchunked`` writes eStargz-style entries), to
the next larger offset of any entry. A file without chunk entries is one chunk checked by its
``chunkDigest`` or else its file ``digest``. ``chunkType: zeros``
marks a run of zero bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import zstandard

from layerfs.errors import DigestMismatchError, LayerFormatError
from layerfs.lazy.estargz import load_entries
from layerfs.lazy.source import BlobRanges
from layerfs.lazy.toc import (
    MAX_CHUNK_SIZE,
    RawChunk,
    RawEntry,
    Toc,
    TocFormat,
    build_toc,
    content_starts,
    int_field,
    next_start,
    toc_path,
)

PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
POSITION = "manifest-position"
CHECKSUM = "manifest-checksum"
MANIFEST_TYPE_CRFS = 1
SKIPPABLE_HEADER = 8  # bytes of a skippable frame's magic and length
MAX_TOC_SIZE = 256 << 20  # bytes of TOC JSON


def _annotation(annotations: Mapping[str, str], key: str) -> str | None:
    for prefix in PREFIXES:
        if prefix + key in annotations:
            return annotations[prefix + key]
    return None


def has_toc(annotations: Mapping[str, str]) -> bool:
    return _annotation(annotations, POSITION) is not None


def position(annotations: Mapping[str, str], blob_size: int) -> tuple[int, int, int]:
    """(offset, length, uncompressed length) of the TOC, checked against the blob."""
    text = _annotation(annotations, POSITION) or ""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise LayerFormatError(f"zstd:chunked: malformed manifest position {text!r}")
    offset, length, plain, kind = (int(p) for p in parts)
    if kind != MANIFEST_TYPE_CRFS:
        raise LayerFormatError(f"zstd:chunked: unsupported manifest type {kind}")
    if offset < SKIPPABLE_HEADER or offset + length > blob_size or length == 0:
        raise LayerFormatError(f"zstd:chunked: manifest position {text!r} outside the blob")
    if plain > MAX_TOC_SIZE:
        raise LayerFormatError(f"zstd:chunked: TOC larger than {MAX_TOC_SIZE} bytes")
    return offset, length, plain


def read_toc(annotations: Mapping[str, str], source: BlobRanges) -> tuple[Toc, bytes]:
    """Fetch, verify and parse the TOC; return it and the compressed TOC bytes (verified)."""
    offset, length, _ = position(annotations, source.size)
    data = source.read(offset, offset + length)
    return load_stored(annotations, data, source.size), data


def load_stored(annotations: Mapping[str, str], data: bytes, blob_size: int) -> Toc:
    """Verify compressed TOC *data* against the descriptor's checksum, then parse it."""
    offset, _, plain = position(annotations, blob_size)
    expected = _annotation(annotations, CHECKSUM) or ""
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DigestMismatchError(
            f"zstd:chunked TOC hashes to {actual}, the manifest says {expected or 'nothing'}"
        )
    return parse_toc(data, blob_size, offset, plain)


def parse_toc(data: bytes, blob_size: int, offset: int, plain: int) -> Toc:
    """Build the :class:`Toc` of the verified compressed TOC *data* found at *offset*."""
    try:
        text = zstandard.ZstdDecompressor().decompress(data, max_output_size=plain)
    except zstandard.ZstdError as exc:
        raise LayerFormatError(f"zstd:chunked TOC: corrupt zstd data ({exc})") from exc
    if len(text) != plain:
        raise LayerFormatError(f"zstd:chunked TOC: {len(text)} bytes, position says {plain}")
    raw: list[RawEntry] = []
    files: dict[str, tuple[RawEntry, int]] = {}
    docs = load_entries(text, "zstd:chunked TOC")
    starts = content_starts(docs)
    content_end = offset - SKIPPABLE_HEADER
    for doc in docs:
        what = str(doc.get("name"))
        if doc.get("type") == "chunk":
            owner = files.get(toc_path(doc.get("name"), what))
            if owner is None:
                raise LayerFormatError(f"TOC entry {what!r}: chunk of no earlier regular file")
            owner[0].chunks.append(_chunk(doc, what, None))
            continue
        item = RawEntry(doc)
        if doc.get("type") == "reg" and int_field(doc, "size", what):
            item.chunks.append(_chunk(doc, what, doc.get("digest")))
            files[toc_path(doc.get("name"), what)] = (item, int_field(doc, "endOffset", what))
        raw.append(item)
    for item, end in files.values():
        last = max(item.chunks, key=lambda c: c.offset)
        last.end = end or next_start(starts, last.start, content_end)
    return build_toc(TocFormat.ZSTD_CHUNKED, blob_size, raw, content_end)


def _chunk(doc: dict[str, Any], what: str, whole: Any) -> RawChunk:
    digest = doc.get("chunkDigest") or (whole if doc.get("type") == "reg" else None)
    return RawChunk(
        offset=int_field(doc, "chunkOffset", what),
        size=int_field(doc, "chunkSize", what, MAX_CHUNK_SIZE),
        start=int_field(doc, "offset", what),
        end=None,
        digest=digest if isinstance(digest, str) else None,
        zeros=doc.get("chunkType") == "zeros",
    )
