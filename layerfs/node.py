"""Objects of the merged view: nodes, their names, and the tree they form.

A :class:`Node` is one object of the merged view. Hard links share one node, which then has
several :class:`Alias` names. ``Node.layers`` lists, top-down, the layer positions where the
object lives: position 0 is the upper layer, 1..n the lowers. A directory lists every layer
whose directory it merges (cut below an opaque one); a non-directory lists only its top-most
object, plus, for a metadata-only copy-up, the lower that holds its data.

The tree holds only what has been looked up: ``children`` of a directory node are the names
seen so far, its ``index`` (:class:`layerfs.readdir.MergedIndex`) the whole merged listing,
built on first need. A node the FUSE mount no longer refers to is dropped again.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerfs.readdir import MergedIndex

UPPER = 0
LOWER = 1  # HostKey's first item for an object of any lower layer
HostKey = tuple[int, int, int]  # (UPPER or LOWER, st_dev, st_ino): what defines a node

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


_ONE_LAYER: dict[int, tuple[int]] = {}
ONLY_UPPER = (UPPER,)


def one_layer(pos: int) -> tuple[int]:
    """The shared ``(pos,)`` tuple: most nodes live in one layer, and need no tuple of their own."""
    layers = _ONE_LAYER.get(pos)
    if layers is None:
        layers = _ONE_LAYER[pos] = (pos,)
    return layers


_NO_CHILDREN: dict[str, Node] = {}  # shared by every non-directory; never written to
_NO_DIRS: dict[int, Any] = {}


class Node:
    """One object of the merged view (see the module docstring).

    ``dirs`` holds, for a directory that has been entered, the handle of its directory in
    each layer it spans; ``data`` is where a metadata-only copy's data is:
    ``(layer position, parent directory handle, name)``, the handle owned by the node.
    """

    __slots__ = (
        "aliases",
        "children",
        "data",
        "dirs",
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
        self.version = 0  # bumped whenever the object moves to another host object
        is_dir = kind == DIR
        self.children: dict[str, Node] = {} if is_dir else _NO_CHILDREN
        self.index: MergedIndex | None = None
        self.dirs: dict[int, Any] = {} if is_dir else _NO_DIRS
        self.data: tuple[int, Any, str] | None = None
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
        return self.data is not None

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

    def alias_at(self, parent: Node, name: str) -> Alias | None:
        for alias in self.aliases:
            if alias.parent is parent and alias.name == name:
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


def walk(node: Node) -> list[Node]:
    """*node* and every node below it that the tree holds, parents first."""
    found = [node]
    for child in node.children.values():
        found.extend(walk(child))
    return found
