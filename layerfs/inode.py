"""Inode numbers, attributes and xattrs of merged-view objects.

Numbers. Each node gets a number the first time it is seen, keyed by the host identity
``(UPPER or LOWER, st_dev, st_ino)`` of the object that defines it: a directory's top-most
lower directory, a non-directory's top-most object, a metadata-only copy's lower data, and for
an upper object that records its origin (:mod:`layerfs.copyup` writes it, the kernel's
format), that origin. A lower object's number is computed, not stored: its filesystem's
index above its inode number, so it depends on nothing but the object and a copied-up object
gets the same number in every later assembly. Upper objects without an origin get numbers
from a counter in a range of their own. A copy-up registers the upper object under the node's
number, so ``st_ino`` never changes while the stack is assembled and no two objects share one.

Attributes are the defining object's, with the kernel's two adjustments: a merged directory
reports ``st_nlink`` 1, and a metacopy file its data's block count. Changing any attribute
copies the object up first, metadata only where the stack allows it.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from layerfs import copyup
from layerfs.errors import oserror
from layerfs.node import LOWER, UPPER, HostKey, Node
from layerfs.types import Stat
from layerfs.whiteout import is_private_xattr

if TYPE_CHECKING:
    from layerfs.fs import Overlay
    from layerfs.layer import Layer

_PACK_BITS = 48  # a lower object's number: its filesystem's index above a 48-bit inode number
_PACK_LIMIT = 1 << _PACK_BITS
_COUNTER_BASE = 1 << 62  # numbers handed out by the counter: never a packed number


class InodeNumbers:
    """Numbers of the objects a stack has seen, and its table of hard-linked nodes."""

    def __init__(self, lowers: list[Layer]) -> None:
        self._fs_index: dict[int, int] = {}  # st_dev of a lower filesystem -> its index
        self.fs_uuids: dict[int, bytes] = {}
        for layer in lowers:
            root = layer.lstat(layer.root(), ".")
            if root is not None and root.st_dev not in self._fs_index:
                self._fs_index[root.st_dev] = len(self._fs_index) + 1
                self.fs_uuids[root.st_dev] = layer.fs_uuid()
        self._inos: dict[HostKey, int] = {}
        self.linked: dict[HostKey, Node] = {}
        self._next = _COUNTER_BASE
        self.by_handle = True  # lowers can be searched by file handle (until refused once)

    def number(self, key: HostKey) -> int:
        """The number of the object *key* names (see the module docstring)."""
        where, dev, host_ino = key
        fs_index = self._fs_index.get(dev) if where == LOWER else None
        if fs_index is not None and host_ino < _PACK_LIMIT:
            return (fs_index << _PACK_BITS) | host_ino
        ino = self._inos.get(key)
        if ino is None:
            ino = self._allocate()
            self._inos[key] = ino
        return ino

    def _allocate(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    def new(self, st: os.stat_result) -> int:
        """A fresh number for an object the stack just created in the upper.

        Never reuses a number: the host may hand out the inode of a deleted object again
        while the kernel still remembers the old node under its number.
        """
        ino = self._allocate()
        self._inos[(UPPER, st.st_dev, st.st_ino)] = ino
        return ino

    def register_copy(self, node: Node, st: os.stat_result) -> None:
        """The upper object *st* now stands for *node*: it keeps the node's number."""
        key = (UPPER, st.st_dev, st.st_ino)
        self._inos[key] = node.ino
        if not node.is_dir and (st.st_nlink > 1 or len(node.aliases) > 1):
            self.linked[key] = node
            node.linked = True

    def forget_upper(self, st: os.stat_result) -> None:
        """The upper object *st* is being deleted: its host identity may be reused."""
        key = (UPPER, st.st_dev, st.st_ino)
        self._inos.pop(key, None)
        self.linked.pop(key, None)

    def forget_node(self, node: Node) -> None:
        if node.linked:  # scan the hard-link table only for nodes that are in it
            for key in [k for k, n in self.linked.items() if n is node]:
                del self.linked[key]

    def statistics(self) -> tuple[int, int]:
        """``(numbers remembered, hard-linked nodes)``."""
        return len(self._inos), len(self.linked)


# -- attributes -----------------------------------------------------------------------------
def host_stat(fs: Overlay, node: Node) -> os.stat_result:
    layer, parent, name = fs.location(node)
    st = layer.lstat(parent, name)
    if st is None:
        raise oserror(errno.ENOENT)
    return st


def to_stat(fs: Overlay, node: Node, st: os.stat_result) -> Stat:
    """Merged-view attributes of *node* from its defining object's *st*."""
    nlink = 1 if node.is_dir and node.merged() else st.st_nlink
    result = Stat.from_host(st, node.ino, nlink)
    if node.data is not None:
        layer, parent, name = fs.data_location(node)
        data = layer.lstat(parent, name)
        if data is not None:
            result = result._replace(blocks=data.st_blocks)
    return result


def getattr_(fs: Overlay, node: Node) -> Stat:
    if not node.aliases:
        raise oserror(errno.ENOENT)
    return to_stat(fs, node, host_stat(fs, node))


def setattr_(
    fs: Overlay,
    node: Node,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    size: int | None,
    atime_ns: int | None,
    mtime_ns: int | None,
) -> Stat:
    """Change attributes; only ``size`` ever copies file data (and only what survives)."""
    if not node.aliases:
        raise oserror(errno.ENOENT)
    if (mode, uid, gid, size, atime_ns, mtime_ns) == (None,) * 6:
        return getattr_(fs, node)
    fs.check_writable()
    if size is not None:
        _truncate(fs, node, size)
    else:
        copyup.copy_up(fs, node, data=False)
    dirfd, name = fs.upper_location(node)
    if uid is not None or gid is not None:
        fs.upper.chown(dirfd, name, -1 if uid is None else uid, -1 if gid is None else gid)
    if mode is not None:
        fs.upper.chmod(dirfd, name, mode)
    if atime_ns is not None or mtime_ns is not None:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        fs.upper.utimes(
            dirfd,
            name,
            st.st_atime_ns if atime_ns is None else atime_ns,
            st.st_mtime_ns if mtime_ns is None else mtime_ns,
        )
    return getattr_(fs, node)


def _truncate(fs: Overlay, node: Node, size: int) -> None:
    if node.is_dir:
        raise oserror(errno.EISDIR)
    if not copyup.is_regular(node):
        raise oserror(errno.EINVAL)
    if size < 0:
        raise oserror(errno.EINVAL)
    copyup.prepare_write(fs, node, size)
    fs.upper.truncate(*fs.upper_location(node), size)


# -- xattrs ---------------------------------------------------------------------------------
def check_xattr_name(name: str) -> None:
    """The stack's own xattrs are not the caller's to read or change."""
    if is_private_xattr(name):
        raise oserror(errno.EOPNOTSUPP, name)


def getxattr(fs: Overlay, node: Node, name: str) -> bytes:
    """One xattr's value (ENODATA when missing).

    ``ls -l`` asks for two xattrs of every file and most lower files have none: that answer
    is remembered per lower-only node, since lower objects never change.
    """
    check_xattr_name(name)
    if node.no_xattrs and node.lower_only:
        raise oserror(errno.ENODATA, name)
    layer, parent, host_name = fs.location(node)
    if node.lower_only and not layer.listxattr(parent, host_name):
        node.no_xattrs = True
        raise oserror(errno.ENODATA, name)
    value = layer.getxattr(parent, host_name, name)
    if value is None:
        raise oserror(errno.ENODATA, name)
    return value


def listxattr(fs: Overlay, node: Node) -> list[str]:
    layer, parent, host_name = fs.location(node)
    return [a for a in layer.listxattr(parent, host_name) if not is_private_xattr(a)]


def setxattr(fs: Overlay, node: Node, name: str, value: bytes, flags: int) -> None:
    check_xattr_name(name)
    if not node.aliases:
        raise oserror(errno.ENOENT)
    fs.check_writable()
    copyup.copy_up(fs, node, data=False)
    fs.upper.setxattr(*fs.upper_location(node), name, value, flags)


def removexattr(fs: Overlay, node: Node, name: str) -> None:
    check_xattr_name(name)
    if not node.aliases:
        raise oserror(errno.ENOENT)
    fs.check_writable()
    if not node.in_upper:
        getxattr(fs, node, name)  # ENODATA without a needless copy-up
    copyup.copy_up(fs, node, data=False)
    fs.upper.removexattr(*fs.upper_location(node), name)
