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

import os
import stat
from dataclasses import dataclass, field

from layerfs import hostfs
from layerfs.whiteout import OPAQUE_MARKER, WHITEOUT_PREFIX, is_whiteout_stat

UPPER = 0

DIR = stat.S_IFDIR
REG = stat.S_IFREG
LNK = stat.S_IFLNK


@dataclass(slots=True)
class Alias:
    """One name of a node: the directory node it sits in, the name, and whether the upper has it."""

    parent: Node | None
    name: str
    in_upper: bool


@dataclass(slots=True)
class IndexEntry:
    """What the layers hold under one name: ``(layer position, S_IFMT kind)`` top-down."""

    items: list[tuple[int, int]]
    closed: bool = False

    @property
    def top(self) -> tuple[int, int]:
        return self.items[0]

    def has_lower(self) -> bool:
        return any(pos != UPPER for pos, _ in self.items)

    def add_below(self, pos: int, kind: int) -> None:
        """Record the object one layer further down, if it still shows through."""
        if self.closed:
            return
        last_pos, last_kind = self.items[-1]
        if last_kind == DIR and kind == DIR:
            self.items.append((pos, kind))
        elif len(self.items) == 1 and last_pos == UPPER and last_kind == REG and kind == REG:
            self.items.append((pos, kind))  # the data of a possible metacopy upper file
            self.closed = True
        else:
            self.closed = True


@dataclass(slots=True)
class MergedIndex:
    """The merged content of one directory.

    ``entries`` holds the visible names. ``lower_names`` holds every name that exists in a
    lower layer of this directory, visible or not: removing such a name must leave a whiteout.
    ``upper_whiteouts`` holds names the upper directory has a whiteout for.
    """

    entries: dict[str, IndexEntry] = field(default_factory=dict)
    lower_names: set[str] = field(default_factory=set)
    upper_whiteouts: set[str] = field(default_factory=set)
    sorted_names: list[str] | None = None

    def names(self) -> list[str]:
        if self.sorted_names is None:
            self.sorted_names = sorted(self.entries)
        return self.sorted_names

    def put(self, name: str, entry: IndexEntry) -> None:
        if name not in self.entries:
            self.sorted_names = None
        self.entries[name] = entry

    def drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self.sorted_names = None


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
        "lower_stat",
        "opaque",
        "version",
    )

    def __init__(self, ino: int, kind: int, layers: list[int]) -> None:
        self.ino = ino
        self.kind = kind
        self.layers = layers
        self.aliases: list[Alias] = []
        self.opaque = False
        self.version = 0
        self.children: dict[str, Node] = {}
        self.index: MergedIndex | None = None
        self.dirfds: dict[int, int] = {}
        self.lower_stat: os.stat_result | None = None  # cached: lower objects never change
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
        for fd in self.dirfds.values():
            os.close(fd)
        self.dirfds.clear()
        if self.data_dirfd is not None:
            os.close(self.data_dirfd)
            self.data_dirfd = None


def scan_layer(dirfd: int) -> tuple[list[tuple[str, int, bool]], set[str], bool]:
    """List one layer's directory: ``(name, kind, is_whiteout)``, OCI-whited-out names, opaque.

    The kind comes from ``d_type`` where the filesystem gives it; character devices are
    stat'ed to tell a 0/0 whiteout from a real device.
    """
    entries: list[tuple[str, int, bool]] = []
    wh_names: set[str] = set()
    opaque_marker = False
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
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
    finally:
        os.close(fd)
    return entries, wh_names, opaque_marker


def _entry_kind(entry: os.DirEntry[str]) -> tuple[int, bool]:
    if entry.is_dir(follow_symlinks=False):
        return DIR, False
    if entry.is_symlink():
        return LNK, False
    if entry.is_file(follow_symlinks=False):
        return REG, False
    st = entry.stat(follow_symlinks=False)
    return stat.S_IFMT(st.st_mode), is_whiteout_stat(st)


def build_index(layer_fds: list[tuple[int, int]]) -> MergedIndex:
    """Merge the listings of one directory's layers, given top-down as ``(position, dirfd)``.

    A whiteout hides the name in the layers below it (not in its own layer: an OCI layer
    never holds both); a non-directory hides everything below it; directories merge.
    """
    index = MergedIndex()
    hidden: set[str] = set()
    lower_seen: set[str] = set()
    for pos, dirfd in layer_fds:
        listing, wh_names, _ = scan_layer(dirfd)
        layer_hidden = set(wh_names)
        for name, kind, whiteout in listing:
            if whiteout:
                layer_hidden.add(name)
                continue
            if pos != UPPER and name not in lower_seen:
                lower_seen.add(name)
                index.lower_names.add(name)
            if name in hidden:
                continue
            entry = index.entries.get(name)
            if entry is None:
                index.entries[name] = IndexEntry([(pos, kind)])
            else:
                entry.add_below(pos, kind)
        if pos == UPPER:
            index.upper_whiteouts = layer_hidden
        else:
            lower_seen |= layer_hidden
        for name in layer_hidden:
            entry = index.entries.get(name)
            if entry is not None:
                entry.closed = True
            else:
                hidden.add(name)
    return index


def is_opaque_at(dirfd: int, name: str, opaque_xattrs: tuple[str, ...]) -> bool:
    """Whether the directory *name* in one layer is opaque (either xattr, or the OCI marker)."""
    fd = os.open(name, hostfs.O_PATH_DIR, dir_fd=dirfd)
    try:
        path = f"/proc/self/fd/{fd}"
        for attr in opaque_xattrs:
            try:
                if os.getxattr(path, attr) == b"y":
                    return True
            except OSError:
                continue
        return hostfs.lstat_or_none(fd, OPAQUE_MARKER) is not None
    finally:
        os.close(fd)
