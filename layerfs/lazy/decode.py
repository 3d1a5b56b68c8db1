"""Turning a chunk's compressed bytes into its verified content.

A chunk is served only after its bytes hash to the digest its verified TOC gives
(:class:`DigestMismatchError` otherwise, and the bytes are dropped). Output is bounded by the
chunk's size, so a crafted range cannot make the decoder allocate more than the TOC allows.
"""

from __future__ import annotations

import hashlib
import io

import zstandard

from layerfs.errors import DigestMismatchError, LayerFormatError
from layerfs.lazy.estargz import gunzip
from layerfs.lazy.toc import Chunk, TocFormat
from layerfs.tar.compression import MAX_ZSTD_WINDOW


def zeros(chunk: Chunk) -> bytes:
    return bytes(chunk.size)


def decompress(fmt: TocFormat, chunk: Chunk, data: bytes) -> bytes:
    """The chunk's content from its compressed bytes *data* (``chunk.start``..``chunk.end``)."""
    want = chunk.inner_offset + chunk.size
    what = f"chunk at blob offset {chunk.start}"
    decode = gunzip if fmt is TocFormat.ESTARGZ else _unzstd
    plain = decode(data, want, what)
    if len(plain) < want:
        raise LayerFormatError(f"{what}: decompresses to {len(plain)} bytes, wanted {want}")
    return plain[chunk.inner_offset : want]


def _unzstd(data: bytes, want: int, what: str) -> bytes:
    """At most *want* bytes decoded from the zstd frames in *data* (the window is bounded)."""
    decoder = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
    out = bytearray()
    try:
        with decoder.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while len(out) < want and (piece := reader.read(want - len(out))):
                out += piece
    except zstandard.ZstdError as exc:
        raise LayerFormatError(f"{what}: corrupt zstd data ({exc})") from exc
    return bytes(out)


def verify(chunk: Chunk, content: bytes, what: str) -> bytes:
    """*content* if it hashes to the chunk's digest; :class:`DigestMismatchError` otherwise."""
    actual = "sha256:" + hashlib.sha256(content).hexdigest()
    if actual != chunk.digest:
        raise DigestMismatchError(
            f"{what}: chunk at file offset {chunk.offset} hashes to {actual}, "
            f"the TOC says {chunk.digest}"
        )
    return content
