"""Open file and open directory handles: the integers the kernel passes back to us.

A directory handle holds the listing taken when the directory was opened; readdir offsets are
indexes into that snapshot, so a listing stays consistent (no entry skipped or repeated) while
the directory changes underneath it.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from layerfs.errors import oserror

if TYPE_CHECKING:
    from layerfs import FileHandle


@dataclass(slots=True)
class OpenFile:
    """One ``open``/``create`` of inode *ino*; *lower_only* says the data cannot change."""

    ino: int
    handle: FileHandle
    lower_only: bool = False


@dataclass(slots=True)
class OpenDir:
    """One ``opendir`` of inode *ino* and the merged listing taken at that moment."""

    ino: int
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HandleStatistics:
    open: int
    opened_total: int


T = TypeVar("T", OpenFile, OpenDir)


class HandleTable(Generic[T]):
    """Handle number -> open object. Numbers are never reused within one mount.

    Opening and releasing a file costs two dictionary operations: which handles an inode
    has is found by a scan (:meth:`of_inode`), which only the rare getattr of a file whose
    name is gone needs.
    """

    def __init__(self) -> None:
        self._open: dict[int, T] = {}
        self._next = 1
        self._lock = threading.Lock()  # worker threads open and close files too

    def add(self, item: T) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
        self._open[fh] = item
        return fh

    def get(self, fh: int) -> T:
        """The object of handle *fh*; ``EBADF`` for a handle that is not open."""
        try:
            return self._open[fh]
        except KeyError:
            raise oserror(errno.EBADF) from None

    def pop(self, fh: int) -> T:
        """Remove handle *fh* and return its object; ``EBADF`` if it is not open."""
        try:
            return self._open.pop(fh)
        except KeyError:
            raise oserror(errno.EBADF) from None

    def of_inode(self, ino: int) -> Iterator[T]:
        """The open objects of inode *ino* (e.g. to stat a file whose name is gone)."""
        for item in list(self._open.values()):
            if item.ino == ino:
                yield item

    def drain(self) -> list[T]:
        """Remove and return everything still open (at unmount)."""
        items = list(self._open.values())
        self._open.clear()
        return items

    def statistics(self) -> HandleStatistics:
        return HandleStatistics(open=len(self._open), opened_total=self._next - 1)
