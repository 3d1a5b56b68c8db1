"""Which TOC format a layer descriptor announces, and reading its TOC."""

from __future__ import annotations

from collections.abc import Mapping

from layerfs.lazy import estargz, zstdchunked
from layerfs.lazy.source import BlobRanges
from layerfs.lazy.toc import Toc, TocFormat


def toc_format(annotations: Mapping[str, str]) -> TocFormat | None:
    """The format whose TOC the descriptor's annotations locate and verify, or ``None``.

    zstd:chunked wins when both are present (``ctr-remote --zstdchunked`` writes both, and
    its blob is zstd).
    """
    if zstdchunked.has_toc(annotations):
        return TocFormat.ZSTD_CHUNKED
    if estargz.has_toc(annotations):
        return TocFormat.ESTARGZ
    return None


def read_toc(
    fmt: TocFormat, annotations: Mapping[str, str], source: BlobRanges
) -> tuple[Toc, bytes]:
    """Fetch, verify and parse a layer's TOC; also return the bytes kept to parse it again."""
    if fmt is TocFormat.ESTARGZ:
        return estargz.read_toc(annotations, source)
    return zstdchunked.read_toc(annotations, source)


def load_stored(
    fmt: TocFormat, annotations: Mapping[str, str], blob_size: int, content_end: int, data: bytes
) -> Toc:
    """Verify and parse TOC bytes that :func:`read_toc` returned earlier (kept in the store);
    *content_end* is the returned TOC's own."""
    if fmt is TocFormat.ESTARGZ:
        return estargz.load_stored(annotations, data, blob_size, content_end)
    return zstdchunked.load_stored(annotations, data, blob_size)
