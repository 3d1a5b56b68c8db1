"""The public stack: lowers + optional upper, with POSIX-like operations on the merged view.

:class:`Stack` is a thin facade over the modules that do the work (``docs/design.md`` draws
them): it takes the stack's lock for each call and hands it to :mod:`~layerfs.namei`,
:mod:`~layerfs.readdir`, :mod:`~layerfs.inode`, :mod:`~layerfs.copyup`,
:mod:`~layerfs.dirops` and :mod:`~layerfs.file`. Two faces (see ``docs/api.md``): a *node*
API for inode-based callers such as the FUSE mount (``lookup``, ``getattr``, ``mkdir_at``...),
and a *path* API for programs and tests (``lstat``, ``mkdir``, ``rename``...; see
:mod:`layerfs.pathapi`).

Guarantees: every operation raises ``OSError`` with the errno kernel overlayfs gives, and a
failed operation changes nothing visible; every change of the merged view is written to the
upper directory in overlayfs's format (``docs/semantics.md`` lists where layerfs differs on
purpose); a copy-up is never visible half-done. All calls are thread-safe: they serialise on
the stack's lock, except that the data of a copy-up is copied without it (other objects stay
usable meanwhile) and reads and writes of open files go to their host descriptors directly.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from layerfs import dirops, file, inode, namei
from layerfs.errors import ConfigError, oserror
from layerfs.fs import Overlay
from layerfs.hostfs import RENAME_EXCHANGE as RENAME_EXCHANGE
from layerfs.hostfs import RENAME_NOREPLACE as RENAME_NOREPLACE
from layerfs.node import Node, walk
from layerfs.options import StackOptions, StackSpec, parse_mount_options
from layerfs.pathapi import CallerView
from layerfs.types import DirEntry, FileKind, Stat, StatFs

if TYPE_CHECKING:
    from layerfs.access import Credentials
    from layerfs.file import FileHandle
    from layerfs.layer import Layer, LayerSource

PathArg = str | os.PathLike[str]
BeforeWrite = Callable[[Node], None]


class Stack(CallerView):
    """Read-only lower layers (top-most first) under an optional writable upper layer.

    The path methods (``lstat``, ``open``, ``mkdir``...) come from
    :class:`~layerfs.pathapi.CallerView` and act for this process, unchecked.
    """

    def __init__(
        self,
        lowers: Sequence[PathArg | LayerSource],
        upper: PathArg | None = None,
        work: PathArg | None = None,
        *,
        options: StackOptions | None = None,
        layers: list[Layer] | None = None,
    ) -> None:
        """Assemble a stack of host directories (or of the layers *lowers* sources open);
        *layers*, when given, are the lower layers themselves (any
        :class:`~layerfs.layer.Layer`, top-most first) and *lowers* only names them."""
        spec = StackSpec(
            tuple(Path(p) if isinstance(p, (str, os.PathLike)) else p for p in lowers),
            Path(upper) if upper is not None else None,
            Path(work) if work is not None else None,
            options or StackOptions(),
        )
        self._fs = Overlay(spec, layers)
        super().__init__(self, None)

    @classmethod
    def from_spec(cls, spec: StackSpec) -> Stack:
        return cls(spec.lowers, spec.upper, spec.work, options=spec.options)

    @classmethod
    def from_mount_options(cls, text: str) -> Stack:
        """Assemble from overlay syntax: ``lowerdir=A:B,upperdir=U,workdir=W``."""
        spec, rest = parse_mount_options(text)
        if rest:
            raise ConfigError(f"unknown stack option: {rest[0]}")
        return cls.from_spec(spec)

    def as_caller(self, creds: Credentials) -> CallerView:
        """The path API as the caller *creds* would see it through a kernel mount: with the
        VFS's permission checks (see :mod:`layerfs.pathapi`)."""
        return CallerView(self, creds)

    def close(self) -> None:
        """Release the layers and every handle the node tree holds; open FileHandles keep
        their own."""
        fs = self._fs
        with fs.lock:
            for node in walk(fs.root):
                fs.release(node)
            fs.close_layers()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # == state ==============================================================================
    @property
    def root(self) -> Node:
        return self._fs.root

    @property
    def spec(self) -> StackSpec:
        return self._fs.spec

    @property
    def options(self) -> StackOptions:
        return self._fs.options

    @property
    def readonly(self) -> bool:
        return self._fs.readonly

    @property
    def has_upper(self) -> bool:
        return self._fs.has_upper

    @property
    def lower_count(self) -> int:
        return len(self._fs.layers) - 1

    def statfs(self) -> StatFs:
        """Filesystem statistics of the upper (of the top-most lower when read-only)."""
        return self._fs.statfs()

    # == node API: reading ==================================================================
    def lookup(self, parent: Node, name: str) -> Node:
        """The child *name* of directory *parent* (ENOENT, ENOTDIR)."""
        with self._fs.lock:
            return namei.lookup(self._fs, parent, name)

    def lookup_attr(self, parent: Node, name: str) -> tuple[Node, Stat]:
        """:meth:`lookup` and :meth:`getattr` in one call, with one host stat for a new node."""
        fs = self._fs
        with fs.lock:
            node, st = namei.lookup_stat(fs, parent, name)
            if st is None or len(node.aliases) > 1:  # a hard link's name may be stale
                return node, inode.getattr_(fs, node)
            return node, inode.to_stat(fs, node, st)

    def getattr(self, node: Node) -> Stat:
        """Merged-view attributes: the node's own inode number, ``st_nlink`` 1 for a merged
        directory, a metacopy file's data blocks (ENOENT once its last name is gone)."""
        with self._fs.lock:
            return inode.getattr_(self._fs, node)

    def readdir(self, node: Node) -> list[DirEntry]:
        """A snapshot of the merged listing, sorted by name, without ``.`` and ``..``."""
        fs = self._fs
        with fs.lock:
            entries = []
            for name in self._names(node):
                child = namei.lookup(fs, node, name)
                entries.append(DirEntry(name, child.ino, FileKind(child.kind)))
            return entries

    def listdir_node(self, node: Node) -> list[str]:
        """A snapshot of the merged listing's names, sorted; cheaper than :meth:`readdir`."""
        with self._fs.lock:
            return self._names(node)

    def _names(self, node: Node) -> list[str]:
        if not node.is_dir:
            raise oserror(errno.ENOTDIR)
        if not node.aliases:
            return []
        return list(self._fs.index(node).names())

    def readlink_node(self, node: Node) -> str:
        fs = self._fs
        with fs.lock:
            if node.kind != stat.S_IFLNK:
                raise oserror(errno.EINVAL)
            layer, parent, name = fs.location(node)
        return layer.readlink(parent, name)

    def forget(self, node: Node) -> None:
        """Drop a node nobody refers to any more from the node tree, to bound memory.

        The FUSE mount calls this when the kernel forgets an inode. A node that still has
        open handles or cached children is kept (children point to their parent node).
        Looking the name up again gives a new node with the same inode number.
        """
        fs = self._fs
        with fs.lock:
            if node is fs.root or node.handles > 0 or node.children:
                return
            for alias in node.aliases:
                parent = alias.parent
                if parent is not None and parent.children.get(alias.name) is node:
                    del parent.children[alias.name]
            fs.inodes.forget_node(node)
            fs.release(node)

    # == node API: files and attributes =====================================================
    def open_node(
        self, node: Node, flags: int, *, before_write: BeforeWrite | None = None
    ) -> FileHandle:
        """Open *node*; write access or ``O_TRUNC`` copies it up first (only the data that
        survives a truncate). ELOOP for a symlink, EISDIR to write a directory."""
        with self._fs.lock:
            return file.open_node(self._fs, node, flags, before_write)

    def setattr(
        self,
        node: Node,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Stat:
        """Change attributes (chown before chmod, so a chown's set-id clearing does not undo
        the mode); the object is copied up first, its data only for ``size``."""
        with self._fs.lock:
            return inode.setattr_(self._fs, node, mode, uid, gid, size, atime_ns, mtime_ns)

    def getxattr_node(self, node: Node, name: str) -> bytes:
        """One xattr's value (ENODATA when missing; EOPNOTSUPP for the stack's own)."""
        with self._fs.lock:
            return inode.getxattr(self._fs, node, name)

    def listxattr_node(self, node: Node) -> list[str]:
        """The xattr names of the object, without the stack's own (``*.overlay.*``)."""
        with self._fs.lock:
            return inode.listxattr(self._fs, node)

    def setxattr_node(self, node: Node, name: str, value: bytes, flags: int = 0) -> None:
        """Set an xattr (``XATTR_CREATE``/``XATTR_REPLACE`` as *flags*) after a metadata copy-up."""
        with self._fs.lock:
            inode.setxattr(self._fs, node, name, value, flags)

    def removexattr_node(self, node: Node, name: str) -> None:
        """Remove an xattr (ENODATA, checked before any copy-up) after a metadata copy-up."""
        with self._fs.lock:
            inode.removexattr(self._fs, node, name)

    # == node API: names ====================================================================
    def create(
        self,
        parent: Node,
        name: str,
        flags: int,
        mode: int,
        uid: int | None = None,
        gid: int | None = None,
        *,
        before_write: BeforeWrite | None = None,
        umask: int | None = None,
    ) -> tuple[Node, FileHandle]:
        """Create (or, without ``O_EXCL``, open) the regular file *name* in *parent*, owned
        by *uid*/*gid* (the process's by default; a set-gid directory's group inside one).

        *umask*: the creator's umask where it has not been applied to *mode* yet; the
        parent's default ACL then decides instead of it, if it has one (:mod:`layerfs.acl`).
        """
        fs = self._fs
        with fs.lock:
            try:
                existing = namei.lookup(fs, parent, name)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if flags & os.O_EXCL:
                    raise oserror(errno.EEXIST, name)
                handle = file.open_node(fs, existing, flags & ~os.O_CREAT, before_write)
                return existing, handle
            node = dirops.create(fs, parent, name, mode, uid, gid, umask)
            open_flags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
            return node, file.open_node(fs, node, open_flags, before_write)

    def mkdir_at(
        self,
        parent: Node,
        name: str,
        mode: int,
        uid: int | None = None,
        gid: int | None = None,
        *,
        umask: int | None = None,
    ) -> Node:
        """A new directory (EEXIST, ENOENT for a removed parent, ENAMETOOLONG, EINVAL for a
        ``.wh.`` name); opaque where it replaces a whiteout or sits in a merged parent.
        *umask* as for :meth:`create`."""
        with self._fs.lock:
            return dirops.mkdir(self._fs, parent, name, mode, uid, gid, umask)

    def mknod_at(
        self,
        parent: Node,
        name: str,
        mode: int,
        rdev: int = 0,
        uid: int | None = None,
        gid: int | None = None,
        *,
        umask: int | None = None,
    ) -> Node:
        """A new FIFO, socket, device or (without a type in *mode*) empty regular file.
        *umask* as for :meth:`create`."""
        with self._fs.lock:
            return dirops.mknod(self._fs, parent, name, mode, rdev, uid, gid, umask)

    def symlink_at(
        self, parent: Node, name: str, target: str, uid: int | None = None, gid: int | None = None
    ) -> Node:
        """A new symlink (ENAMETOOLONG for a target of PATH_MAX bytes or more)."""
        with self._fs.lock:
            return dirops.symlink(self._fs, parent, name, target, uid, gid)

    def link_at(self, node: Node, new_parent: Node, new_name: str) -> Node:
        """Give *node* another name; the node itself is returned."""
        with self._fs.lock:
            return dirops.link(self._fs, node, new_parent, new_name)

    def unlink_at(self, parent: Node, name: str) -> None:
        """Remove a non-directory (EISDIR); a name a lower has leaves a whiteout. Open
        handles of the object keep working."""
        with self._fs.lock:
            dirops.unlink(self._fs, parent, name)

    def rmdir_at(self, parent: Node, name: str) -> None:
        """Remove an empty directory (ENOTDIR, ENOTEMPTY counting lower names too)."""
        with self._fs.lock:
            dirops.rmdir(self._fs, parent, name)

    def rename_at(
        self, old_parent: Node, old_name: str, new_parent: Node, new_name: str, flags: int = 0
    ) -> None:
        """rename(2)/renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE; never EXDEV (a
        directory with lower content is copied up whole first)."""
        with self._fs.lock:
            dirops.rename(self._fs, old_parent, old_name, new_parent, new_name, flags)
