"""The tree a layer's TOC describes, as unpacking the layer tar would make it.

:func:`build_tree` replays a :class:`~layerfs.lazy.toc.Toc`'s entries with the rules
:func:`layerfs.tar.apply_layer` follows in LAYER mode (``layerfs/tar/_extract.py``), so a
TOC-backed layer shows exactly what the store's unpacked layer directory of the same blob
shows: an entry replaces what an earlier one put at its name (a directory over a directory
merges, the later metadata wins), missing parents are made (mode 0755), a hard link names
the object its target names at that moment, and whiteouts and opaque markers are applied
after every entry (opaque ones first, then whiteouts shallow-first): a whiteout of a name the
layer has makes a directory of that name opaque and leaves anything else alone, a marker
below a non-directory of the layer does nothing, and the others become whiteouts in the
*upper_format* the store writes (0/0 character devices and ``trusted.overlay.opaque`` for
root, ``.wh.`` files and ``user.overlay.opaque`` otherwise). Overlayfs's own xattrs in a TOC
are dropped, as unpacking drops them.

Objects (:class:`TreeNode`) are never changed once built; hard links share one node.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from layerfs.errors import LayerFormatError, UnsafeLayerError
from layerfs.lazy.toc import EntryType, Toc, TocEntry
from layerfs.whiteout import (
    AUFS_META_PREFIX,
    OPAQUE_MARKER,
    OPAQUE_VALUE,
    WHITEOUT_MODE,
    WHITEOUT_PREFIX,
    WHITEOUT_RDEV,
    UpperFormat,
    WhiteoutStyle,
    is_private_xattr,
    whited_out_name,
)

IMPLICIT_DIR_MODE = 0o755  # a directory the layer needs but has no entry for (and its root)
WHITEOUT_FILE_MODE = 0o600  # a ``.wh.NAME`` file, as unpacking creates it

_KINDS = {
    EntryType.REG: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


@dataclass(slots=True, eq=False)
class TreeNode:
    """One object of a layer: its attributes, and its children (directories) or its TOC
    entry (regular files: where the content is). ``ino`` numbers it within the layer."""

    ino: int
    mode: int  # S_IFMT bits and permissions
    uid: int
    gid: int
    mtime_ns: int
    rdev: int = 0
    link: str = ""  # symlink target
    xattrs: dict[str, bytes] = field(default_factory=dict)
    entry: TocEntry | None = None  # regular files with content
    children: dict[str, TreeNode] | None = None  # directories
    nlink: int = 1
    path: str = ""  # one in-layer path naming the object (hard links: the first kept)

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    @property
    def size(self) -> int:
        if self.entry is not None:
            return self.entry.size
        if stat.S_ISLNK(self.mode):
            return len(os.fsencode(self.link))
        return 0


@dataclass(frozen=True, slots=True)
class LayerTree:
    """A built tree: its root and the number of objects (``ino`` runs from 1 to it)."""

    root: TreeNode
    objects: int

    def links(self) -> dict[int, list[str]]:
        """Every path of each object that has more than one name (by ``ino``)."""
        found: dict[int, list[str]] = {}
        _collect(self.root, "", found)
        return {ino: paths for ino, paths in found.items() if len(paths) > 1}


def _collect(node: TreeNode, prefix: str, found: dict[int, list[str]]) -> None:
    assert node.children is not None
    for name, child in node.children.items():
        path = f"{prefix}/{name}"
        if child.is_dir:
            _collect(child, path, found)
        elif child.nlink > 1:
            found.setdefault(child.ino, []).append(path)


def unpacking_owner() -> tuple[int, int] | None:
    """Who owns what unpacking a layer makes: ``None`` (the entries' owners) for root, the
    user's own ids for anyone else (see :func:`build_tree`)."""
    if os.geteuid() == 0:
        return None
    return os.geteuid(), os.getegid()


def build_tree(
    toc: Toc,
    upper_format: UpperFormat,
    owner: tuple[int, int] | None = None,
    *,
    devices: bool = True,
) -> LayerTree:
    """The layer tree of *toc* (see the module docstring).

    *owner* ``(uid, gid)`` replaces every entry's owner, as unpacking by a user other than
    root does (``None``: the TOC's owners); such a user's tree also keeps only ``user.*``
    xattrs. Without *devices* (unpacking makes device nodes only as root of the host) device
    entries are left out, as unpacking leaves them out. Raises
    :class:`LayerFormatError` (or :class:`UnsafeLayerError`) naming the entry for a TOC that
    cannot be unpacked.
    """
    builder = _Builder(upper_format, owner, devices)
    for entry in toc.entries:
        builder.add(entry)
    builder.finish()
    return LayerTree(builder.root, builder.count)


class _Builder:
    def __init__(
        self, upper_format: UpperFormat, owner: tuple[int, int] | None, devices: bool
    ) -> None:
        self.format = upper_format
        self.owner = owner
        self.devices = devices
        self.count = 0
        self.root = self._dir(IMPLICIT_DIR_MODE)
        self.markers: list[tuple[bool, int, int, list[str], str]] = []

    # -- objects -------------------------------------------------------------------------
    def _new(self, mode: int, uid: int = 0, gid: int = 0, mtime_ns: int = 0) -> TreeNode:
        self.count += 1
        if self.owner is not None:
            uid, gid = self.owner
        return TreeNode(self.count, mode, uid, gid, mtime_ns)

    def _dir(self, perm: int) -> TreeNode:
        node = self._new(stat.S_IFDIR | perm)
        node.children = {}
        return node

    def _xattrs(self, entry: TocEntry) -> dict[str, bytes]:
        keep = {k: v for k, v in entry.xattrs.items() if not is_private_xattr(k)}
        if self.owner is not None:  # what a user can set: its own namespace
            keep = {k: v for k, v in keep.items() if k.startswith("user.")}
        return keep

    # -- entries -------------------------------------------------------------------------
    def add(self, entry: TocEntry) -> None:
        parts = [p for p in entry.path.split("/") if p]
        if any(p.startswith(AUFS_META_PREFIX) and p != OPAQUE_MARKER for p in parts):
            return  # AUFS bookkeeping: nothing to unpack
        for part in parts[:-1]:
            if part.startswith(WHITEOUT_PREFIX):
                raise _malformed(entry, f"a whiteout {part!r} used as a directory")
        if not parts:
            if entry.type is not EntryType.DIR:
                raise UnsafeLayerError(f"layer entry {entry.path!r}: replaces the root directory")
            self._set_meta(self.root, entry)
            return
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            self._marker(entry, parts)
            return
        parent = self._parent(entry, parts[:-1])
        assert parent.children is not None
        existing = parent.children.get(name)
        if entry.type is EntryType.DIR and existing is not None and existing.is_dir:
            self._set_meta(existing, entry)  # a directory over a directory: merged
            return
        if entry.type is EntryType.HARDLINK:
            parent.children.pop(name, None)  # room first: the target may have been below it
            parent.children[name] = self._find(entry, entry.hardlink)
            return
        if entry.type in (EntryType.CHAR, EntryType.BLOCK) and not self.devices:
            return
        parent.children[name] = self._object(entry)

    def _marker(self, entry: TocEntry, parts: list[str]) -> None:
        name = parts[-1]
        opaque = name == OPAQUE_MARKER
        target = "" if opaque else whited_out_name(name)
        if target is None or target in (".", ".."):
            raise UnsafeLayerError(f"layer entry {entry.path!r}: whiteout of {name[4:]!r}")
        depth = len(parts)
        # opaque marks first, then whiteouts shallow-first; TOC order within each
        self.markers.append((not opaque, depth, len(self.markers), parts[:-1], target))

    def _object(self, entry: TocEntry) -> TreeNode:
        kind = _KINDS[entry.type]
        node = self._new(kind | entry.mode, entry.uid, entry.gid, entry.mtime_ns)
        node.xattrs = self._xattrs(entry)
        if kind == stat.S_IFDIR:
            node.children = {}
        elif kind == stat.S_IFLNK:
            node.link = entry.link
        elif kind == stat.S_IFREG:
            node.entry = entry
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = entry.rdev
        return node

    def _set_meta(self, node: TreeNode, entry: TocEntry) -> None:
        node.mode = stat.S_IFDIR | entry.mode
        if self.owner is None:
            node.uid, node.gid = entry.uid, entry.gid
        node.mtime_ns = entry.mtime_ns
        node.xattrs = self._xattrs(entry)

    def _parent(self, entry: TocEntry, parts: list[str]) -> TreeNode:
        """Directory *parts*, made (0755) where missing."""
        node = self.root
        for index, part in enumerate(parts):
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                child = self._dir(IMPLICIT_DIR_MODE)
                node.children[part] = child
            elif not child.is_dir:
                where = "/".join(parts[: index + 1])
                if stat.S_ISLNK(child.mode):
                    raise UnsafeLayerError(
                        f"unsafe layer entry {entry.path!r}: parent {where!r} is a symlink"
                    )
                raise _malformed(entry, f"parent {where!r} is not a directory")
            node = child
        return node

    def _find(self, entry: TocEntry, path: str) -> TreeNode:
        """The non-directory a hard link names."""
        parts = [p for p in path.split("/") if p]
        node = self.root
        for index, part in enumerate(parts):
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                break
            if index + 1 < len(parts) and not child.is_dir:
                if stat.S_ISLNK(child.mode):
                    where = "/".join(parts[: index + 1])
                    raise UnsafeLayerError(
                        f"unsafe layer entry {entry.path!r}: parent {where!r} is a symlink"
                    )
                break
            node = child
        else:
            if node.is_dir:
                raise _malformed(entry, f"hard link target {path!r} is a directory")
            return node
        raise _malformed(entry, f"hard link target {path!r} does not exist")

    # -- the end -------------------------------------------------------------------------
    def finish(self) -> None:
        """Apply the markers, then count names and number what is left."""
        for _, _, _, parent_parts, target in sorted(self.markers):
            directory = self._marker_dir(parent_parts)
            if directory is not None:
                self._apply_marker(directory, target)
        self.markers.clear()
        _count_links(self.root)

    def _marker_dir(self, parts: list[str]) -> TreeNode | None:
        """The directory a marker acts in, made where missing; None below a non-directory."""
        node = self.root
        for part in parts:
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                child = self._dir(IMPLICIT_DIR_MODE)
                node.children[part] = child
            elif not child.is_dir:
                return None
            node = child
        return node

    def _apply_marker(self, directory: TreeNode, target: str) -> None:
        assert directory.children is not None
        opaque = self.format.opaque_xattr
        if not target:
            directory.xattrs[opaque] = OPAQUE_VALUE
            return
        existing = directory.children.get(target)
        if existing is not None:
            if existing.is_dir:
                existing.xattrs[opaque] = OPAQUE_VALUE
            return
        if self.format.whiteouts is WhiteoutStyle.WH_FILE:
            name = WHITEOUT_PREFIX + target
            if name not in directory.children:
                directory.children[name] = self._new(stat.S_IFREG | WHITEOUT_FILE_MODE)
            return
        whiteout = self._new(WHITEOUT_MODE)
        whiteout.rdev = WHITEOUT_RDEV
        directory.children[target] = whiteout


def _count_links(root: TreeNode) -> None:
    """Set ``nlink`` (directories: 2 + subdirectories; others: their names) and ``path``."""
    names: dict[int, int] = {}
    todo = [(root, "")]
    root.path = "/"
    while todo:
        node, path = todo.pop()
        assert node.children is not None
        subdirs = 0
        for name, child in node.children.items():
            where = f"{path}/{name}"
            if child.is_dir:
                subdirs += 1
                child.path = where
                todo.append((child, where))
                continue
            names[child.ino] = names.get(child.ino, 0) + 1
            if not child.path:
                child.path = where
            child.nlink = names[child.ino]
        node.nlink = 2 + subdirs


def _malformed(entry: TocEntry, reason: str) -> LayerFormatError:
    return LayerFormatError(f"bad layer entry {entry.path!r}: {reason}")
