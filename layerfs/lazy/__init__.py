"""Lazy pull: layers read through their table of contents before their blob is local.

See ``docs/lazy.md``. Formats: eStargz (:mod:`~layerfs.lazy.estargz`) and zstd:chunked
(:mod:`~layerfs.lazy.zstdchunked`), parsed into one model (:mod:`~layerfs.lazy.toc`).
"""

from __future__ import annotations

from layerfs.lazy.formats import read_toc, toc_format
from layerfs.lazy.toc import Chunk, EntryType, Toc, TocEntry, TocFormat

__all__ = ["Chunk", "EntryType", "Toc", "TocEntry", "TocFormat", "read_toc", "toc_format"]
