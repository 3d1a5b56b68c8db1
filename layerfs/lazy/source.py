"""What the TOC parsers read a blob through: byte ranges of a blob of known size."""

from __future__ import annotations

from typing import Protocol


class BlobRanges(Protocol):
    """Random access to one blob: :meth:`read` returns exactly ``end - start`` bytes.

    Implementations: :class:`layerfs.registry.ranges.RangeReader` (HTTP range requests) and
    :class:`BytesRanges` (a blob in memory, for tests and local files).
    """

    @property
    def size(self) -> int: ...

    def read(self, start: int, end: int) -> bytes: ...


class BytesRanges:
    """A whole blob held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, start: int, end: int) -> bytes:
        if not 0 <= start <= end <= len(self._data):
            raise ValueError(f"range {start}-{end} outside a {len(self._data)}-byte blob")
        return self._data[start:end]
