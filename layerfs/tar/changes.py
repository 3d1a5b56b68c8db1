"""What an upper changes relative to its lowers, in the style of ``docker diff``.

Each path of the upper is ``A`` (added: the lowers' merged view has nothing there) or ``C``
(changed: something is there below; a directory in the upper exists only because its metadata
or something inside it changed). Each whiteout is ``D``. An opaque directory is reported as
``C`` (or ``A`` when new) and each child it hides (present in the lowers' merged directory and
absent from the upper) as ``D``, which is what ``docker diff`` shows for a directory that was
removed and created again. Paths are absolute (``/etc/passwd``) and the list is sorted.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from layerfs.layer import HostLayer
from layerfs.node import Node
from layerfs.stack import Stack
from layerfs.tar._upper import scan_dir


class ChangeKind(enum.Enum):
    """The letter ``docker diff`` prints."""

    ADDED = "A"
    CHANGED = "C"
    DELETED = "D"


@dataclass(frozen=True, order=True)
class Change:
    """One changed path (absolute, ``/``-separated)."""

    path: str
    kind: ChangeKind


def diff_changes(
    upper: os.PathLike[str] | str, lowers: Sequence[os.PathLike[str] | str] = ()
) -> list[Change]:
    """The changes *upper* makes over *lowers* (top-most first), sorted by path.

    What the lowers show is asked of the core (a read-only :class:`~layerfs.Stack` over
    them), so a diff sees exactly what a mount of the same layers shows.
    """
    changes: list[Change] = []
    layer = HostLayer(upper)
    below = Stack(lowers) if lowers else None
    try:
        _walk(_Walk(layer, below, changes), layer.root(), "", below=below is not None, hidden=False)
    finally:
        layer.close()
        if below is not None:
            below.close()
    return sorted(changes)


@dataclass
class _Walk:
    layer: HostLayer
    below: Stack | None
    out: list[Change]

    def lower(self, path: str) -> Node | None:
        """What the lowers' merged view holds at *path*, or None."""
        if self.below is None:
            return None
        try:
            return self.below.resolve("/" + path)
        except OSError:
            return None


def _walk(walk: _Walk, handle: int, path: str, *, below: bool, hidden: bool) -> None:
    """Record the changes inside upper directory *path*.

    *below*: a directory is at *path* in the lowers; *hidden*: an opaque directory above hides
    it, so its lower children that the upper lacks are deleted too.
    """
    scan = scan_dir(walk.layer, handle)
    hides = hidden or scan.opaque
    names = {name for name, _ in scan.children}
    for name in scan.whiteouts - names:
        walk.out.append(Change("/" + _join(path, name), ChangeKind.DELETED))
    if hides and below and walk.below is not None:
        for name in walk.below.listdir("/" + path):
            if name not in names and name not in scan.whiteouts:
                walk.out.append(Change("/" + _join(path, name), ChangeKind.DELETED))
    for name, st in scan.children:
        child = _join(path, name)
        found = walk.lower(child) if below else None
        walk.out.append(Change("/" + child, ChangeKind.CHANGED if found else ChangeKind.ADDED))
        if stat.S_ISDIR(st.st_mode):
            merges = found is not None and found.is_dir
            sub = walk.layer.open_dir(handle, name)
            try:
                _walk(walk, sub, child, below=merges, hidden=hides)
            finally:
                walk.layer.close_dir(sub)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
