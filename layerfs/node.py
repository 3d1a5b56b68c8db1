"""Objects of the merged view and the per-directory merged index that makes lookup cheap.

A :class:`Node` is one object of the merged view. Hard links share one node, which then has
several :class:`Alias` names. ``Node.layers`` lists, top-down, the layer positions where the
object lives: position 0 is the upper layer, 1..n the lowers. A directory lists every layer
whose directory it merges (cut below an opaque one); a non-directory lists only its top-most
object, plus, for a metadata-only copy-up, the lower that holds its data.

A directory's :class:`MergedIndex` is built once from one ``scandir`` per layer and then kept
up to date by the stack's own changes, so a lookup at depth 128 costs the same dictionary hit
as at depth 1. Lower layers never change while a stack is assembled (the same rule as kernel
overlayfs), which is what makes caching them sound.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from layerfs import hostfs
from layerfs.whiteout import OPAQUE_MARKER, WHITEOUT_PREFIX, is_whiteout_stat

UPPER = 0

DIR = stat.S_IFDIR
REG = stat.S_IFREG
LNK = stat.S_IFLNK
_KINDS = {
    kind: kind for kind in (DIR, REG, LNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
}


@dataclass(slots=True)
class Alias:
    """One name of a node: the directory node it sits in, the name, and whether the upper has it."""

    parent: Node | None
    name: str
    in_upper: bool


Items = tuple[tuple[int, int], ...]  # (layer position, S_IFMT kind), top-down
_KIND_SPAN = 1 << 16  # S_IFMT values fit below this


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


_ONE_LAYER: dict[int, tuple[int]] = {}
ONLY_UPPER = (UPPER,)


def one_layer(pos: int) -> tuple[int]:
    """The shared ``(pos,)`` tuple: most nodes live in one layer, and need no tuple of their own."""
    layers = _ONE_LAYER.get(pos)
    if layers is None:
        layers = _ONE_LAYER[pos] = (pos,)
    return layers


_NO_CHILDREN: dict[str, Node] = {}  # shared by every non-directory; never written to
_NO_FDS: dict[int, int] = {}


class Node:
    """One object of the merged view (see the module docstring)."""

    __slots__ = (
        "aliases",
        "children",
        "data_dirfd",
        "data_name",
        "dirfds",
        "handles",
        "index",
        "ino",
        "kind",
        "layers",
        "linked",
        "no_xattrs",
        "opaque",
        "version",
    )

    def __init__(self, ino: int, kind: int, layers: tuple[int, ...]) -> None:
        self.ino = ino
        self.kind = _KINDS.get(kind, kind)  # one int object per kind, not one per node
        self.layers = layers
        self.aliases: list[Alias] = []
        self.opaque = False
        self.no_xattrs = False  # a lower-only object known to carry no xattrs (cached)
        self.linked = False  # registered in the stack's hard-link table
        self.version = 0
        is_dir = kind == DIR
        self.children: dict[str, Node] = {} if is_dir else _NO_CHILDREN
        self.index: MergedIndex | None = None
        self.dirfds: dict[int, int] = {} if is_dir else _NO_FDS
        self.data_dirfd: int | None = None  # metacopy: where the data lives (owned fd)
        self.data_name = ""
        self.handles = 0  # open FileHandles; an unlinked node lives on while this is > 0

    def __repr__(self) -> str:
        return f"<Node ino={self.ino} {self.path()!r} layers={self.layers}>"

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR

    @property
    def in_upper(self) -> bool:
        return bool(self.layers) and self.layers[0] == UPPER

    @property
    def metacopy(self) -> bool:
        return self.data_dirfd is not None

    @property
    def lower_only(self) -> bool:
        return not self.in_upper

    def merged(self) -> bool:
        """Whether this directory merges more than one layer (its nlink is then reported as 1)."""
        return len(self.layers) > 1

    def primary(self) -> Alias:
        return self.aliases[0]

    def upper_alias(self) -> Alias | None:
        for alias in self.aliases:
            if alias.in_upper:
                return alias
        return None

    def path(self) -> str:
        """The node's current path in the merged view (first name of a hard-linked file)."""
        parts: list[str] = []
        node: Node | None = self
        while node is not None and node.aliases and node.aliases[0].parent is not None:
            parts.append(node.aliases[0].name)
            node = node.aliases[0].parent
        return "/" + "/".join(reversed(parts))

    def is_ancestor_of(self, other: Node) -> bool:
        node: Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.aliases[0].parent if node.aliases else None
        return False

    def close_fds(self) -> None:
        if self.dirfds:
            for fd in self.dirfds.values():
                os.close(fd)
            self.dirfds.clear()
        if self.data_dirfd is not None:
            os.close(self.data_dirfd)
            self.data_dirfd = None


def scan_layer(dirfd: int) -> tuple[list[tuple[str, int, bool]], set[str], bool]:
    """List one layer's directory: ``(name, kind, is_whiteout)``, OCI-whited-out names, opaque.

    The kind comes from ``d_type`` where the filesystem gives it; character devices are
    stat'ed to tell a 0/0 whiteout from a real device. A readable *dirfd* is listed in place
    (``scandir`` rewinds it afterwards); an ``O_PATH`` one through a descriptor opened for it.
    """
    try:
        return _scan(dirfd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return _scan(fd)
    finally:
        os.close(fd)


def _scan(fd: int) -> tuple[list[tuple[str, int, bool]], set[str], bool]:
    entries: list[tuple[str, int, bool]] = []
    wh_names: set[str] = set()
    opaque_marker = False
    with os.scandir(fd) as it:
        for entry in it:
            name = entry.name
            if name.startswith(WHITEOUT_PREFIX):
                if name == OPAQUE_MARKER:
                    opaque_marker = True
                elif len(name) > len(WHITEOUT_PREFIX):
                    wh_names.add(name[len(WHITEOUT_PREFIX) :])
                continue
            kind, whiteout = _entry_kind(entry)
            entries.append((name, kind, whiteout))
    return entries, wh_names, opaque_marker


def _entry_kind(entry: os.DirEntry[str]) -> tuple[int, bool]:
    if entry.is_file(follow_symlinks=False):  # the common case first: one call
        return REG, False
    if entry.is_dir(follow_symlinks=False):
        return DIR, False
    if entry.is_symlink():
        return LNK, False
    st = entry.stat(follow_symlinks=False)
    return stat.S_IFMT(st.st_mode), is_whiteout_stat(st)


def build_index(layer_fds: list[tuple[int, int]]) -> MergedIndex:
    """Merge the listings of one directory's layers, given top-down as ``(position, dirfd)``.

    A whiteout hides the name in the layers below it (not in its own layer: an OCI layer
    never holds both); a non-directory hides everything below it; directories merge.
    """
    index = MergedIndex()
    # Values as the index keeps them: one encoded int while a name is in one layer (nearly
    # always), a list once a lower layer adds to it.
    found: dict[str, int | list[tuple[int, int]]] = {}
    closed: set[str] = set()
    hidden: set[str] = set()
    for pos, dirfd in layer_fds:
        listing, wh_names, _ = scan_layer(dirfd)
        layer_hidden = set(wh_names)
        for name, kind, whiteout in listing:
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
    last_pos, last_kind = items[-1]
    if last_kind == DIR and kind == DIR:
        items.append((pos, kind))
        return True
    if len(items) == 1 and last_pos == UPPER and last_kind == REG and kind == REG:
        items.append((pos, kind))  # the data of a possible metacopy upper file
    return False


def is_opaque_dir(fd: int, opaque_xattrs: tuple[str, ...]) -> bool:
    """Whether the directory open as *fd* in one layer is opaque (either xattr, or the OCI
    marker inside it). One ``flistxattr`` answers for the usual directory without xattrs."""
    try:
        names = hostfs.fd_listxattr(fd)
    except OSError:
        names = list(opaque_xattrs)
    for attr in opaque_xattrs:
        if attr not in names:
            continue
        try:
            if hostfs.fd_getxattr(fd, attr) == b"y":
                return True
        except OSError:
            continue
    return hostfs.lstat_or_none(fd, OPAQUE_MARKER) is not None
