"""Directory contents: one directory of one layer in either encoding, and their merge.

:func:`scan` reads one layer's directory into real entries, the names it whites out (0/0
character devices and ``.wh.NAME`` files alike) and whether it holds the opaque marker. The
:class:`MergedIndex` of a merged directory is built once from one scan per layer, top-down
(:func:`build_index`), and then kept current by the stack's own changes, so a lookup at depth
128 costs the same dictionary hit as at depth 1 and a listing is the sorted keys. Lower layers
never change while a stack is assembled, which is what makes keeping it sound.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from layerfs.layer import Layer, LayerDir
from layerfs.node import DIR, REG, UPPER
from layerfs.whiteout import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    WHITEOUT_PREFIX,
    is_opaque_value,
    is_whiteout_stat,
    whited_out_name,
)

Items = tuple[tuple[int, int], ...]  # (layer position, S_IFMT kind), top-down
_KIND_SPAN = 1 << 16  # S_IFMT values fit below this


@dataclass(slots=True)
class Scan:
    """One directory of one layer: ``(name, kind, is_whiteout)`` entries, the names its
    ``.wh.`` files hide, and whether it holds the OCI opaque marker."""

    entries: list[tuple[str, int, bool]] = field(default_factory=list)
    oci_hidden: set[str] = field(default_factory=set)
    opaque_marker: bool = False


def scan(layer: Layer, handle: LayerDir) -> Scan:
    """Read one directory of one layer; character devices are stat'ed to tell a 0/0
    whiteout from a real device."""
    found = Scan()
    for name, kind in layer.entries(handle):
        if name.startswith(WHITEOUT_PREFIX):
            if name == OPAQUE_MARKER:
                found.opaque_marker = True
            else:
                hidden = whited_out_name(name)
                if hidden is not None:
                    found.oci_hidden.add(hidden)
            continue
        whiteout = False
        if kind == stat.S_IFCHR:
            st = layer.lstat(handle, name)
            whiteout = st is not None and is_whiteout_stat(st)
        found.entries.append((name, kind, whiteout))
    return found


def is_opaque(layer: Layer, handle: LayerDir) -> bool:
    """Whether an open directory of *layer* is opaque: either opaque xattr, or the OCI marker
    inside it. One xattr listing answers for the usual directory without xattrs."""
    try:
        names = layer.dir_listxattr(handle)
    except OSError:
        names = list(OPAQUE_XATTRS)
    for attr in OPAQUE_XATTRS:
        if attr not in names:
            continue
        try:
            if is_opaque_value(layer.dir_getxattr(handle, attr)):
                return True
        except OSError:
            continue
    return layer.lstat(handle, OPAQUE_MARKER) is not None


def _encode(items: Items) -> int | Items:
    """One item, the common case, is kept as a single int: 100,000 names stay small."""
    if len(items) == 1:
        pos, kind = items[0]
        return pos * _KIND_SPAN + kind
    return items


def _decode(value: int | Items) -> Items:
    if isinstance(value, int):
        return ((value // _KIND_SPAN, value % _KIND_SPAN),)
    return value


class MergedIndex:
    """The merged content of one directory.

    For each visible name, what the layers hold under it: ``(layer position, kind)`` pairs,
    top-down, cut where lookup stops; ``upper_whiteouts`` holds the names the upper directory
    has a whiteout for (a create there must replace it).
    """

    __slots__ = ("_entries", "_sorted", "upper_whiteouts")

    def __init__(self) -> None:
        self._entries: dict[str, int | Items] = {}
        self._sorted: list[str] | None = None
        self.upper_whiteouts: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Items | None:
        value = self._entries.get(name)
        return None if value is None else _decode(value)

    def put(self, name: str, items: Items) -> None:
        if name not in self._entries:
            self._sorted = None
        self._entries[name] = _encode(items)

    def adopt(self, entries: dict[str, int | Items]) -> None:
        """Take a whole encoded table at once (:func:`build_index`)."""
        self._entries = entries
        self._sorted = None

    def drop(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self._sorted = None

    def names(self) -> list[str]:
        """Visible names, sorted (cached until the next change)."""
        if self._sorted is None:
            self._sorted = sorted(self._entries)
        return self._sorted


def build_index(layers: list[tuple[int, Layer, LayerDir]]) -> MergedIndex:
    """Merge the listings of one directory's layers, given top-down as ``(position, layer,
    handle)``.

    A whiteout hides the name in the layers below it (not in its own layer: an OCI layer
    never holds both); a non-directory hides everything below it; directories merge.
    """
    index = MergedIndex()
    # Values as the index keeps them: one encoded int while a name is in one layer (nearly
    # always), a list once a lower layer adds to it.
    found: dict[str, int | list[tuple[int, int]]] = {}
    closed: set[str] = set()
    hidden: set[str] = set()
    for pos, layer, handle in layers:
        listing = scan(layer, handle)
        layer_hidden = set(listing.oci_hidden)
        for name, kind, whiteout in listing.entries:
            if whiteout:
                layer_hidden.add(name)
                continue
            if name in hidden or name in closed:
                continue
            value = found.get(name)
            if value is None:
                found[name] = pos * _KIND_SPAN + kind
                continue
            items = list(_decode(value)) if isinstance(value, int) else value
            found[name] = items
            if not _extends(items, pos, kind):
                closed.add(name)
        if pos == UPPER:
            index.upper_whiteouts = layer_hidden
        for name in layer_hidden:
            if name in found:
                closed.add(name)
            else:
                hidden.add(name)
    index.adopt({name: v if isinstance(v, int) else _encode(tuple(v)) for name, v in found.items()})
    return index


def _extends(items: list[tuple[int, int]], pos: int, kind: int) -> bool:
    """Record the object one layer further down if it still shows through; False stops."""
    last_kind = items[-1][1]
    if last_kind == DIR and kind == DIR:
        items.append((pos, kind))
        return True
    if len(items) == 1 and last_kind == REG and kind == REG:
        items.append((pos, kind))  # the data of a possible metacopy file above it
    return False
