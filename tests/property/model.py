"""Reference model of the merged view: a dict of path -> inode, short enough to be obviously right.

:func:`flatten` applies the overlayfs lookup rules to declarative lower layers (see
:mod:`tests.property.layers`) and :class:`Model` then applies POSIX operations to the merged
view, raising ``OSError`` with the errno Linux gives for the same call on kernel overlayfs.
Hard links are two paths holding the same :class:`Inode` object. The model knows nothing of
upper directories, copy-up or whiteouts on disk: those are how layerfs *implements* this view.

Error order follows the kernel's: parents are resolved first (ENOENT, ENOTDIR, and ELOOP for
a symlink mid-path, because the layerfs path API never follows symlinks), then the names.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import dataclass, field
from typing import Literal

from tests.property import layers as L

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
Kind = Literal["dir", "file", "symlink", "fifo"]
_idents = itertools.count(1)


@dataclass
class Inode:
    kind: Kind
    mode: int  # permission bits only
    uid: int
    gid: int
    data: bytes = b""
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime_ns: int | None = L.OLD_NS  # None: changed by the test at an unknown time
    ident: int = field(default_factory=lambda: next(_idents))


def fail(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


# --- flattening the lowers ------------------------------------------------------------------


def _leaf_inode(entry: L.Entry) -> Inode:
    if isinstance(entry, L.File):
        node = Inode("file", entry.mode, entry.uid, entry.gid, data=entry.data)
        node.xattrs = dict(entry.xattrs)
        return node
    if isinstance(entry, L.Symlink):
        return Inode("symlink", 0o777, entry.uid, entry.gid, target=entry.target)
    assert isinstance(entry, L.Fifo)
    return Inode("fifo", entry.mode, entry.uid, entry.gid)


def _children(layers: list[L.Layer], indexes: list[int], path: str) -> set[str]:
    names = set()
    for i in indexes:
        for p in layers[i]:
            if L.parent_of(p) == path and p != "/":
                names.add(L.name_of(p))
    return names


def flatten(layers: list[L.Layer]) -> dict[str, Inode]:
    """The merged view of *layers* (top-most first) under the overlayfs lookup rules.

    Top-down per name: a whiteout hides the name and everything below it; a non-directory
    stops the descent; directories merge; an opaque directory stops the descent below itself.
    """
    merged: dict[str, Inode] = {"/": Inode("dir", 0o755, 0, 0)}
    _visit(layers, list(range(len(layers))), "/", merged, {})
    return merged


def _visit(
    layers: list[L.Layer],
    contrib: list[int],
    path: str,
    merged: dict[str, Inode],
    links: dict[tuple[int, str], Inode],
) -> None:
    """Merge the directory *path*, present as a directory in the layers *contrib*."""
    for name in sorted(_children(layers, contrib, path)):
        child = L.join(path, name)
        dirs: list[int] = []
        for i in contrib:
            entry = layers[i].get(child)
            if entry is None:
                continue
            if isinstance(entry, L.Whiteout):
                break
            if not isinstance(entry, L.Dir):
                if not dirs:
                    merged[child] = _lower_inode(layers[i], i, child, links)
                break
            dirs.append(i)
            if entry.opaque is not None:
                break
        if dirs:
            top = layers[dirs[0]][child]
            assert isinstance(top, L.Dir)
            merged[child] = Inode("dir", top.mode, top.uid, top.gid, xattrs=dict(top.xattrs))
            _visit(layers, dirs, child, merged, links)


def _lower_inode(
    layer: L.Layer, index: int, path: str, links: dict[tuple[int, str], Inode]
) -> Inode:
    """The model inode of a lower non-directory; both names of a hard link pair share one."""
    entry = layer[path]
    if isinstance(entry, L.File) and entry.link is not None:
        path = entry.link
        entry = layer[path]
    key = (index, path)
    if key not in links:
        links[key] = _leaf_inode(entry)
    return links[key]


# --- the model ------------------------------------------------------------------------------


class Model:
    """The merged view as ``path -> Inode``; every method mirrors one Stack path call."""

    def __init__(self, layers: list[L.Layer], uid: int = 0, gid: int = 0) -> None:
        self.nodes = flatten(layers)
        self.uid = uid
        self.gid = gid

    # queries

    def get(self, path: str) -> Inode | None:
        return self.nodes.get(path)

    def children(self, path: str) -> list[str]:
        return sorted(L.name_of(p) for p in self.nodes if p != "/" and L.parent_of(p) == path)

    def subtree(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [p for p in self.nodes if p == path or p.startswith(prefix)]

    def link_groups(self) -> set[frozenset[str]]:
        groups: dict[int, set[str]] = {}
        for p, node in self.nodes.items():
            if node.kind != "dir":
                groups.setdefault(node.ident, set()).add(p)
        return {frozenset(g) for g in groups.values()}

    # resolution

    def _parent(self, path: str) -> str:
        """Resolve the parent of *path*: ENOENT, ENOTDIR, or ELOOP at the first bad component."""
        parent = L.parent_of(path)
        current = ""
        for part in [p for p in parent.split("/") if p]:
            current += "/" + part
            node = self.nodes.get(current)
            if node is None:
                raise fail(errno.ENOENT, path)
            if node.kind == "symlink":
                raise fail(errno.ELOOP, path)
            if node.kind != "dir":
                raise fail(errno.ENOTDIR, path)
        return parent

    def _existing(self, path: str) -> Inode:
        self._parent(path)
        node = self.nodes.get(path)
        if node is None:
            raise fail(errno.ENOENT, path)
        return node

    def _new_name(self, path: str) -> None:
        self._parent(path)
        if path in self.nodes:
            raise fail(errno.EEXIST, path)
        if L.name_of(path).startswith(".wh."):
            raise fail(errno.EINVAL, path)

    def _regular(self, path: str) -> Inode:
        node = self._existing(path)
        if node.kind == "dir":
            raise fail(errno.EISDIR, path)
        if node.kind == "symlink":
            raise fail(errno.ELOOP, path)
        return node

    # data

    def write(self, path: str, data: bytes, how: str, offset: int = 0) -> None:
        """open(O_WRONLY|O_CREAT + O_TRUNC / O_APPEND / nothing) then write at *offset*."""
        self._parent(path)
        if path not in self.nodes:
            self._new_name(path)
            self.nodes[path] = Inode("file", 0o644, self.uid, self._new_gid(path), mtime_ns=None)
        node = self._regular(path)
        if how == "trunc":
            node.data, offset = b"", 0
            node.mtime_ns = None
        elif how == "append":
            offset = len(node.data)
        if data:  # a write of nothing changes neither size nor mtime
            buf = node.data.ljust(offset, b"\0")
            node.data = buf[:offset] + data + buf[offset + len(data) :]
            node.mtime_ns = None

    def truncate(self, path: str, size: int) -> None:
        node = self._regular(path)
        node.data = node.data[:size].ljust(size, b"\0")
        node.mtime_ns = None

    # namespace

    def mkdir(self, path: str, mode: int) -> None:
        self._new_name(path)
        sgid = self.nodes[L.parent_of(path)].mode & stat.S_ISGID
        self.nodes[path] = Inode("dir", mode | sgid, self.uid, self._new_gid(path), mtime_ns=None)

    def symlink(self, target: str, path: str) -> None:
        self._new_name(path)
        gid = self._new_gid(path)
        node = Inode("symlink", 0o777, self.uid, gid, target=target, mtime_ns=None)
        self.nodes[path] = node

    def mkfifo(self, path: str, mode: int) -> None:
        self._new_name(path)
        self.nodes[path] = Inode("fifo", mode, self.uid, self._new_gid(path), mtime_ns=None)

    def rmdir(self, path: str) -> None:
        node = self._existing(path)
        if path == "/":
            raise fail(errno.EBUSY, path)
        if node.kind != "dir":
            raise fail(errno.ENOTDIR, path)
        if self.children(path):
            raise fail(errno.ENOTEMPTY, path)
        del self.nodes[path]

    def unlink(self, path: str) -> None:
        node = self._existing(path)
        if node.kind == "dir":
            raise fail(errno.EISDIR, path)
        del self.nodes[path]

    def link(self, old: str, new: str) -> None:
        node = self._existing(old)
        self._parent(new)
        if new in self.nodes:
            raise fail(errno.EEXIST, new)
        if node.kind == "dir":
            raise fail(errno.EPERM, old)
        if L.name_of(new).startswith(".wh."):
            raise fail(errno.EINVAL, new)
        self.nodes[new] = node

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """renameat2() with the VFS's checks in the VFS's order."""
        self._parent(old)
        self._parent(new)
        src = self.nodes.get(old)
        if src is None:
            raise fail(errno.ENOENT, old)
        dst = self.nodes.get(new)
        exchange = bool(flags & RENAME_EXCHANGE)
        if exchange and dst is None:
            raise fail(errno.ENOENT, new)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise fail(errno.EEXIST, new)
        self._check_ancestry(old, new, exchange)
        if dst is src:
            return
        if L.name_of(new).startswith(".wh.") and not exchange:
            raise fail(errno.EINVAL, new)
        if exchange:
            self._exchange(old, new)
            return
        if dst is not None:
            self._check_replace(src, dst, new)
            del self.nodes[new]
        self._move(old, new)

    def _check_ancestry(self, old: str, new: str, exchange: bool) -> None:
        if L.parent_of(old) == L.parent_of(new):
            return
        if new.startswith(old + "/"):
            raise fail(errno.EINVAL, new)
        if old.startswith(new + "/"):
            raise fail(errno.EINVAL if exchange else errno.ENOTEMPTY, new)

    def _check_replace(self, src: Inode, dst: Inode, new: str) -> None:
        if src.kind == "dir" and dst.kind != "dir":
            raise fail(errno.ENOTDIR, new)
        if src.kind != "dir" and dst.kind == "dir":
            raise fail(errno.EISDIR, new)
        if dst.kind == "dir" and self.children(new):
            raise fail(errno.ENOTEMPTY, new)

    def _move(self, old: str, new: str) -> None:
        moved = {new + p[len(old) :]: self.nodes.pop(p) for p in self.subtree(old)}
        self.nodes.update(moved)

    def _exchange(self, old: str, new: str) -> None:
        a = {p[len(old) :]: self.nodes.pop(p) for p in self.subtree(old)}
        b = {p[len(new) :]: self.nodes.pop(p) for p in self.subtree(new)}
        self.nodes.update({new + rest: node for rest, node in a.items()})
        self.nodes.update({old + rest: node for rest, node in b.items()})

    # metadata

    def chmod(self, path: str, mode: int) -> None:
        self._existing(path).mode = mode

    def chown(self, path: str, uid: int, gid: int) -> None:
        """As root: a non-directory loses set-uid, and set-gid where the group may execute."""
        node = self._existing(path)
        if uid != -1:
            node.uid = uid
        if gid != -1:
            node.gid = gid
        if node.kind != "dir":
            node.mode &= ~stat.S_ISUID
            if node.mode & stat.S_IXGRP:
                node.mode &= ~stat.S_ISGID

    def _new_gid(self, path: str) -> int:
        """A new object takes a set-gid parent's group (``inode_init_owner``)."""
        parent = self.nodes[L.parent_of(path)]
        return parent.gid if parent.mode & stat.S_ISGID else self.gid

    def utimes(self, path: str, mtime_ns: int) -> None:
        self._existing(path).mtime_ns = mtime_ns

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        node = self._existing(path)
        if flags & XATTR_CREATE and name in node.xattrs:
            raise fail(errno.EEXIST, path)
        if flags & XATTR_REPLACE and name not in node.xattrs:
            raise fail(errno.ENODATA, path)
        node.xattrs[name] = value

    def removexattr(self, path: str, name: str) -> None:
        node = self._existing(path)
        if name not in node.xattrs:
            raise fail(errno.ENODATA, path)
        del node.xattrs[name]
