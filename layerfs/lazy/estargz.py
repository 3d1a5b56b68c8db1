"""eStargz: a gzip layer whose members start at every file, with a TOC and a footer at its end.

Layout (stargz-snapshotter's ``docs/estargz.md``): the blob is a concatenation of gzip
members; each non-empty regular file's payload (and each chunk of a large one) begins a new
member at its TOC ``offset``. The last tar entry, ``stargz.index.json``, is the TOC in its own
member; a 51-byte **footer** follows: an empty gzip member whose Extra field reads
``SG`` + ``%016x`` (the TOC member's offset) + ``STARGZ``. The layer descriptor's annotation
``containerd.io/snapshot/stargz/toc.digest`` is the sha256 of the TOC JSON, which is how the
TOC (and through its ``chunkDigest`` values every chunk) is verified.

A chunk's compressed bytes run from its ``offset`` to the next larger offset any entry has
(or to the TOC), and decompress, after ``innerOffset`` bytes, to the chunk.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Mapping
from typing import Any

from layerfs.errors import DigestMismatchError, LayerFormatError
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

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
FOOTER_SIZE = 51  # bytes
MAX_TOC_SIZE = 256 << 20  # bytes of TOC JSON
_EXTRA = b"\x1a\x00SG\x16\x00"  # XLEN=26, SI1 SI2, LEN=22


def has_toc(annotations: Mapping[str, str]) -> bool:
    return TOC_DIGEST_ANNOTATION in annotations


def parse_footer(footer: bytes) -> int:
    """The TOC offset a 51-byte eStargz footer records; :class:`LayerFormatError` otherwise."""
    if (
        len(footer) != FOOTER_SIZE
        or footer[:3] != b"\x1f\x8b\x08"
        or not footer[3] & 0x04
        or footer[10:16] != _EXTRA
        or footer[32:38] != b"STARGZ"
    ):
        raise LayerFormatError("not an eStargz blob: no eStargz footer at its end")
    try:
        return int(footer[16:32].decode("ascii"), 16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LayerFormatError("eStargz footer: malformed TOC offset") from exc


def gunzip(data: bytes, limit: int, what: str) -> bytes:
    """Decompress concatenated gzip members, at most *limit* bytes of output."""
    out = bytearray()
    rest = data
    try:
        while rest and len(out) < limit:
            member = zlib.decompressobj(31)
            out += member.decompress(rest, limit - len(out))
            if not member.eof:
                if member.unconsumed_tail and len(out) >= limit:
                    break
                raise LayerFormatError(f"{what}: gzip data ends inside a member")
            rest = member.unused_data
    except zlib.error as exc:
        raise LayerFormatError(f"{what}: corrupt gzip data ({exc})") from exc
    return bytes(out)


def read_toc(annotations: Mapping[str, str], source: BlobRanges) -> tuple[Toc, bytes]:
    """Fetch, verify and parse the TOC; return it and the TOC member's tar bytes (header and
    JSON), which :func:`load_stored` parses again."""
    size = source.size
    if size < FOOTER_SIZE:
        raise LayerFormatError("not an eStargz blob: shorter than its footer")
    toc_offset = parse_footer(source.read(size - FOOTER_SIZE, size))
    if not 0 <= toc_offset < size - FOOTER_SIZE:
        raise LayerFormatError(f"eStargz footer: TOC offset {toc_offset} outside the blob")
    plain = gunzip(source.read(toc_offset, size - FOOTER_SIZE), MAX_TOC_SIZE + 4096, "eStargz TOC")
    return load_stored(annotations, plain, size, toc_offset), plain


def load_stored(
    annotations: Mapping[str, str], plain: bytes, blob_size: int, toc_offset: int
) -> Toc:
    """Verify the TOC in the tar bytes *plain* against the descriptor's TOC digest, then
    parse it.

    The TOC file itself is a tar entry of the layer (``stargz.index.json``, what ``umoci
    unpack`` and every non-lazy runtime show), so it becomes an entry of the :class:`Toc` too,
    whose one chunk is the TOC member, checked by the same digest.
    """
    member, data = _toc_member(plain)
    expected = annotations.get(TOC_DIGEST_ANNOTATION, "")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DigestMismatchError(f"eStargz TOC hashes to {actual}, the manifest says {expected}")
    own = {
        "type": "reg",
        "name": TOC_NAME,
        "mode": member.mode,
        "uid": member.uid,
        "gid": member.gid,
        "size": member.size,
        "modtime": _rfc3339(member.mtime),
        "offset": toc_offset,
        "innerOffset": member.offset_data,
        "chunkDigest": expected,
        "digest": expected,
    }
    return parse_toc(data, blob_size, toc_offset, own)


def _rfc3339(mtime: float) -> str | None:
    if not mtime:
        return None
    stamp = datetime.datetime.fromtimestamp(int(mtime), datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _toc_member(plain: bytes) -> tuple[tarfile.TarInfo, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != TOC_NAME or not member.isreg():
                raise LayerFormatError(f"eStargz TOC: first tar entry is not {TOC_NAME}")
            if member.size > MAX_TOC_SIZE:
                raise LayerFormatError(f"eStargz TOC larger than {MAX_TOC_SIZE} bytes")
            stream = tar.extractfile(member)
            assert stream is not None  # a regular member always has a stream
            return member, stream.read()
    except tarfile.TarError as exc:
        raise LayerFormatError(f"eStargz TOC: not a tar entry ({exc})") from exc


def load_entries(data: bytes, what: str) -> list[dict[str, Any]]:
    """The ``entries`` of a TOC document (version 1)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayerFormatError(f"{what}: invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise LayerFormatError(f"{what}: not a version 1 TOC")
    entries = doc.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LayerFormatError(f"{what}: entries is not a list of objects")
    return entries


def parse_toc(
    data: bytes, blob_size: int, toc_offset: int, own: dict[str, Any] | None = None
) -> Toc:
    """Build the :class:`Toc` of verified TOC JSON *data*; *own* is the entry of the TOC file
    itself (added last, where the layer tar has it)."""
    docs = load_entries(data, "eStargz TOC") + ([own] if own else [])
    starts = content_starts(docs)
    raw: list[RawEntry] = []
    files: dict[str, RawEntry] = {}
    for doc in docs:
        what = str(doc.get("name"))
        if doc.get("type") == "chunk":
            owner = files.get(toc_path(doc.get("name"), what))
            if owner is None:
                raise LayerFormatError(f"TOC entry {what!r}: chunk of no earlier regular file")
            owner.chunks.append(_chunk(doc, what, starts, blob_size - FOOTER_SIZE))
            continue
        item = RawEntry(doc)
        if doc.get("type") == "reg" and int_field(doc, "size", what):
            item.chunks.append(_chunk(doc, what, starts, blob_size - FOOTER_SIZE))
            files[toc_path(doc.get("name"), what)] = item
        raw.append(item)
    return build_toc(TocFormat.ESTARGZ, blob_size, raw, toc_offset, blob_size - FOOTER_SIZE)


def _chunk(doc: dict[str, Any], what: str, starts: list[int], last_end: int) -> RawChunk:
    start = int_field(doc, "offset", what)
    end = next_start(starts, start, last_end)
    digest = doc.get("chunkDigest")
    return RawChunk(
        offset=int_field(doc, "chunkOffset", what),
        size=int_field(doc, "chunkSize", what, MAX_CHUNK_SIZE),
        start=start,
        end=end,
        digest=digest if isinstance(digest, str) else None,
        inner_offset=int_field(doc, "innerOffset", what, MAX_CHUNK_SIZE),
    )
