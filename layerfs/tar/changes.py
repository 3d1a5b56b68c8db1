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

from layerfs import hostfs
from layerfs.tar._lowers import LowerView
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
    """The changes *upper* makes over *lowers* (top-most first), sorted by path."""
    changes: list[Change] = []
    root = hostfs.open_root(upper)
    try:
        with LowerView(lowers) as view:
            _walk(root, "", view, changes, below=bool(lowers), hidden=False)
    finally:
        os.close(root)
    return sorted(changes)


def _walk(
    dir_fd: int, path: str, view: LowerView, out: list[Change], *, below: bool, hidden: bool
) -> None:
    """Record the changes inside upper directory *path*.

    *below*: a directory is at *path* in the lowers; *hidden*: an opaque directory above hides
    it, so its lower children that the upper lacks are deleted too.
    """
    scan = scan_dir(dir_fd)
    hides = hidden or scan.opaque
    names = {name for name, _ in scan.children}
    for name in scan.whiteouts - names:
        out.append(Change("/" + _join(path, name), ChangeKind.DELETED))
    if hides and below:
        for name in view.listdir(path):
            if name not in names and name not in scan.whiteouts:
                out.append(Change("/" + _join(path, name), ChangeKind.DELETED))
    for name, st in scan.children:
        child = _join(path, name)
        found = view.lookup(child) if below else None
        out.append(Change("/" + child, ChangeKind.CHANGED if found else ChangeKind.ADDED))
        if stat.S_ISDIR(st.st_mode):
            merges = found is not None and stat.S_ISDIR(found.st.st_mode)
            sub = os.open(name, hostfs.O_PATH_DIR, dir_fd=dir_fd)
            try:
                _walk(sub, child, view, out, below=merges, hidden=hides)
            finally:
                os.close(sub)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
