"""Lookup: which object a name of the merged view is, resolved top-down through the layers.

The index of the parent directory (:mod:`layerfs.readdir`) already says, per name, which
layers hold what under it, cut where the overlay rules stop the descent: a whiteout hides the
name and stops, a non-directory stops, directories merge. :func:`lookup` turns such an entry
into a :class:`~layerfs.node.Node`: for a directory it walks the candidates top-down with one
:class:`LookupRecord` per layer (is it a directory, is it opaque, does the descent stop
here); for an upper regular file it asks whether the upper object holds only metadata (its
data then stays below); every node gets its inode number from the object that defines it
(:mod:`layerfs.inode`).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerfs.errors import oserror
from layerfs.node import DIR, LOWER, REG, UPPER, Alias, HostKey, Node, one_layer
from layerfs.readdir import Items, is_opaque
from layerfs.whiteout import (
    METACOPY_XATTRS,
    ORIGIN_XATTRS,
    Origin,
    is_whiteout_stat,
    oci_whiteout_name,
    parse_origin,
)

if TYPE_CHECKING:
    from layerfs.fs import Overlay


@dataclass(frozen=True, slots=True)
class LookupRecord:
    """What one layer's directory of a looked-up name contributes (``ovl_lookup_data``)."""

    pos: int
    opaque: bool  # it hides the lowers below it
    stop: bool  # the descent ends here (opaque, or the last candidate)


def lookup(fs: Overlay, parent: Node, name: str) -> Node:
    """The child *name* of directory *parent* (ENOENT, ENOTDIR), ``.`` and ``..`` included."""
    if not parent.is_dir:
        raise oserror(errno.ENOTDIR, name)
    if name == "." or name == "":
        return parent
    if name == "..":
        up = parent.aliases[0].parent
        return up if up is not None else fs.root
    return lookup_stat(fs, parent, name)[0]


def lookup_stat(fs: Overlay, parent: Node, name: str) -> tuple[Node, os.stat_result | None]:
    """Like :func:`lookup` for a plain name, with the host stat taken if the node is new."""
    child = parent.children.get(name)
    if child is not None:
        return child, None
    items = fs.index(parent).get(name)
    if items is None:
        raise oserror(errno.ENOENT, name)
    node, st = _make_node(fs, parent, name, items)
    parent.children[name] = node
    return node, st


def resolve(fs: Overlay, path: str) -> Node:
    """The node at *path* (no symlink followed); for internal walks."""
    node = fs.root
    for part in path.split("/"):
        if part:
            node = lookup(fs, node, part)
    return node


def _make_node(fs: Overlay, parent: Node, name: str, items: Items) -> tuple[Node, os.stat_result]:
    pos = items[0][0]
    layer = fs.layers[pos]
    handle = fs.dir(parent, pos)
    st = layer.lstat(handle, name)
    if st is None:
        raise oserror(errno.ENOENT, name)
    kind = stat.S_IFMT(st.st_mode)
    if kind == DIR:
        return _make_dir(fs, parent, name, items, st), st
    data_pos = None
    if kind == REG and len(items) > 1 and _is_metacopy(fs, pos, parent, name):
        data_pos = _data_below(fs, parent, pos, name)
    if data_pos is not None:
        key_st = _lstat(fs, parent, data_pos, name)
        key: HostKey = (LOWER, key_st.st_dev, key_st.st_ino)
    elif pos == UPPER:
        key_st = st
        key = _upper_key(fs, parent, name, st)
    else:
        key_st = st
        key = (LOWER, st.st_dev, st.st_ino)
    alias = Alias(parent, name, pos == UPPER)
    if key_st.st_nlink > 1:
        linked = fs.inodes.linked.get(key)
        if linked is not None and linked.aliases:
            linked.aliases.append(alias)
            return linked, st
    layers = one_layer(pos) if data_pos is None else (pos, data_pos)
    node = Node(fs.inodes.number(key), kind, layers)
    node.aliases.append(alias)
    if data_pos is not None:
        data_layer = fs.layers[data_pos]
        node.data = (data_pos, data_layer.open_dir(fs.dir(parent, data_pos), "."), name)
    if key_st.st_nlink > 1:
        fs.inodes.linked[key] = node
        node.linked = True
    return node, st


def _make_dir(fs: Overlay, parent: Node, name: str, items: Items, st: os.stat_result) -> Node:
    """A directory node: the candidate layers top-down until one stops the descent."""
    candidates = [p for p, k in items if k == DIR]
    layers: list[int] = []
    opaque = False
    for pos in candidates:
        record = _record(fs, parent, name, pos, pos == candidates[-1])
        layers.append(record.pos)
        if record.stop:
            opaque = record.opaque and record.pos == UPPER
            break
    key_pos = next((p for p in layers if p != UPPER), None)
    if key_pos is None:
        key = _upper_key(fs, parent, name, st)
    else:
        if key_pos != layers[0]:
            st = _lstat(fs, parent, key_pos, name)
        key = (LOWER, st.st_dev, st.st_ino)
    node = Node(fs.inodes.number(key), DIR, tuple(layers))
    node.opaque = opaque
    node.aliases.append(Alias(parent, name, layers[0] == UPPER))
    return node


def _record(fs: Overlay, parent: Node, name: str, pos: int, last: bool) -> LookupRecord:
    """One layer's part in looking a directory up. The bottom candidate's opaqueness does
    not matter (nothing is below it to hide) and is not asked, except for the upper's: the
    stack marks its own directories' opaqueness on the node."""
    if last and pos != UPPER:
        return LookupRecord(pos, opaque=False, stop=True)
    opaque = _opaque_in(fs, parent, pos, name)
    return LookupRecord(pos, opaque=opaque, stop=opaque or last)


def _opaque_in(fs: Overlay, parent: Node, pos: int, name: str) -> bool:
    """Whether directory *name* of *parent* is opaque in layer *pos*.

    The handle opened to ask is not kept: a directory seen in a listing may never be
    entered, and a deep stack would otherwise hold one handle per layer for every directory
    it has shown (:meth:`Overlay.dir` opens them when the directory is entered).
    """
    layer = fs.layers[pos]
    handle = layer.open_dir(fs.dir(parent, pos), name)
    try:
        return is_opaque(layer, handle)
    finally:
        layer.close_dir(handle)


def _lstat(fs: Overlay, parent: Node, pos: int, name: str) -> os.stat_result:
    st = fs.layers[pos].lstat(fs.dir(parent, pos), name)
    if st is None:
        raise oserror(errno.ENOENT, name)
    return st


def _is_metacopy(fs: Overlay, pos: int, parent: Node, name: str) -> bool:
    """Whether regular file *name* holds only metadata in layer *pos* (either namespace)."""
    names = fs.layers[pos].listxattr(fs.dir(parent, pos), name)
    return any(attr in METACOPY_XATTRS for attr in names)


def _data_below(fs: Overlay, parent: Node, pos: int, name: str) -> int | None:
    """The layer holding a metacopy file's data: the next regular file below that is not a
    metacopy itself; None where a whiteout, another kind or nothing comes first."""
    for below in parent.layers[parent.layers.index(pos) + 1 :]:
        layer, handle = fs.layers[below], fs.dir(parent, below)
        st = layer.lstat(handle, name)
        if st is None:
            marker = oci_whiteout_name(name)
            if marker is not None and layer.lstat(handle, marker) is not None:
                return None
            continue
        if not stat.S_ISREG(st.st_mode):
            return None
        if not _is_metacopy(fs, below, parent, name):
            return below
    return None


# -- origin ---------------------------------------------------------------------------------
def _upper_key(fs: Overlay, parent: Node, name: str, st: os.stat_result) -> HostKey:
    """The key of an upper object: its origin's, if it was copied up, else its own."""
    origin = read_origin(fs, fs.dir(parent, UPPER), name)
    if origin is not None:
        key = _find_origin(fs, parent, name, origin)
        if key is not None:
            return key
    return (UPPER, st.st_dev, st.st_ino)


def origin_value(fs: Overlay, upper_dirfd: int, name: str) -> bytes | None:
    """The raw ``origin`` xattr of upper object *name*, in either namespace, or None."""
    layer = fs.layers[UPPER]
    for attr in ORIGIN_XATTRS:
        value = layer.getxattr(upper_dirfd, name, attr)
        if value is not None:
            return value
    return None


def read_origin(fs: Overlay, upper_dirfd: int, name: str) -> Origin | None:
    value = origin_value(fs, upper_dirfd, name)
    return parse_origin(value) if value else None


def _find_origin(fs: Overlay, parent: Node, name: str, origin: Origin) -> HostKey | None:
    """The lower object *origin* names: first where it was copied up from (the same name in
    the top-most lower that has it), else by its handle, which a host layer can only open
    with ``CAP_DAC_READ_SEARCH`` (so a renamed copy keeps its number only with it)."""
    for pos in parent.layers:
        if pos == UPPER:
            continue
        layer, handle = fs.layers[pos], fs.dir(parent, pos)
        st = layer.lstat(handle, name)
        if st is None:
            continue
        if layer.file_handle(handle, name) == (origin.handle_type, origin.handle):
            return (LOWER, st.st_dev, st.st_ino)
        break
    return _open_origin(fs, origin)


def _open_origin(fs: Overlay, origin: Origin) -> HostKey | None:
    if not fs.inodes.by_handle:
        return None
    for layer in fs.layers[1:]:
        root = layer.lstat(layer.root(), ".")
        if root is None or fs.inodes.fs_uuids.get(root.st_dev, origin.uuid) != origin.uuid:
            continue
        try:
            st = layer.find_by_handle(origin.handle_type, origin.handle)
        except PermissionError:
            fs.inodes.by_handle = False
            return None
        if st is not None:
            return (LOWER, st.st_dev, st.st_ino)
    return None


# -- what lower layers hold ------------------------------------------------------------------
def lower_positive(fs: Overlay, parent: Node, name: str) -> bool:
    """Whether a lower layer of *parent* shows *name*: removing it must leave a whiteout.

    Asked only when a name is removed, so the index need not remember every lower name.
    """
    for pos in parent.layers:
        if pos == UPPER:
            continue
        layer, handle = fs.layers[pos], fs.dir(parent, pos)
        st = layer.lstat(handle, name)
        if st is not None:
            return not is_whiteout_stat(st)
        marker = oci_whiteout_name(name)
        if marker is not None and layer.lstat(handle, marker) is not None:
            return False
    return False


def discover_aliases(fs: Overlay, pos: int, lower_st: os.stat_result) -> None:
    """Look up every name of a hard-linked lower object that the merged view still shows, so
    each joins the object's node (and gets linked when the object is copied up)."""
    for path in fs.layers[pos].hard_links(lower_st):
        try:
            resolve(fs, path)
        except OSError:
            continue
