"""The path API: the merged view by path, for one caller.

``stack.lstat("/a/b")`` and the other path methods of :class:`layerfs.Stack` act for the
process, without permission checks, as root does. ``stack.as_caller(Credentials(1000, 1000))``
gives a :class:`CallerView` with the same methods as that caller would see them through a
kernel mount of the stack: search permission on every directory walked, write permission to
add or remove a name, the sticky-directory rule, the owner rules of chmod/chown/utimes and
xattrs, ``protected_hardlinks``, set-id bits dropped by writes, truncates and chowns, and new
objects owned by the caller (a set-gid directory's group and bit are the stack's own rule).
Each check comes in the order the kernel's VFS makes it, before the stack changes anything.

No path method follows a symlink, at the end of a path or in it (``ELOOP`` mid-path); a path
argument of ``PATH_MAX`` bytes or more gives ``ENAMETOOLONG``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from layerfs import access
from layerfs.access import MAY_EXEC, MAY_READ, MAY_WRITE, Credentials
from layerfs.dirops import PATH_MAX, check_rename, check_rename_types
from layerfs.errors import oserror
from layerfs.hostfs import RENAME_EXCHANGE

if TYPE_CHECKING:
    from layerfs.file import FileHandle
    from layerfs.node import Node
    from layerfs.stack import Stack
    from layerfs.types import DirEntry, Stat

_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
T = TypeVar("T")


class CallerView:
    """A stack's path API for *creds* (None: the process itself, unchecked)."""

    def __init__(self, stack: Stack, creds: Credentials | None = None) -> None:
        self.stack = stack
        self.creds = creds

    # -- walking ---------------------------------------------------------------------------
    def _attr(self, node: Node) -> Stat:
        return self.stack.getattr(node)

    def _permission(self, node: Node, mask: int) -> None:
        if self.creds is not None:
            access.permission(self._attr(node), self.creds, mask)

    def _search(self, node: Node, path: str) -> None:
        if node.kind == stat.S_IFLNK:
            raise oserror(errno.ELOOP, path)
        if not node.is_dir:
            raise oserror(errno.ENOTDIR, path)
        self._permission(node, MAY_EXEC)

    def resolve(self, path: str) -> Node:
        """The node at *path*; search permission checked on every directory walked."""
        node = self.stack.root
        for part in _components(path):
            self._search(node, path)
            node = self.stack.lookup(node, part)
        return node

    def _parent_of(self, path: str) -> tuple[Node, str]:
        parts = _components(path)
        if not parts:
            raise oserror(errno.EBUSY, path)
        parent = self.resolve("/" + "/".join(parts[:-1]))
        self._search(parent, path)
        return parent, parts[-1]

    def _child(self, parent: Node, name: str) -> Node | None:
        try:
            return self.stack.lookup(parent, name)
        except FileNotFoundError:
            return None

    def _new_name(self, path: str) -> tuple[Node, str]:
        """The parent of a name about to be created: EEXIST first, then may_create."""
        parent, name = self._parent_of(path)
        if self.creds is not None:
            if self._child(parent, name) is not None:
                raise oserror(errno.EEXIST, path)
            access.may_create(self._attr(parent), self.creds)
        return parent, name

    def _victim(self, path: str) -> tuple[Node, str]:
        parent, name = self._parent_of(path)
        if self.creds is not None:
            node = self.stack.lookup(parent, name)
            access.may_delete(self._attr(parent), self._attr(node), self.creds)
        return parent, name

    def _owner(self) -> dict[str, int]:
        return {} if self.creds is None else {"uid": self.creds.uid, "gid": self.creds.gid}

    def _drop_privs(self, node: Node) -> None:
        if self.creds is None:
            return
        mode = access.mode_after_write(self._attr(node), self.creds)
        if mode is not None:
            self.stack.setattr(node, mode=mode)

    # -- reading ---------------------------------------------------------------------------
    def lstat(self, path: str) -> Stat:
        return _named(path, lambda: self._attr(self.resolve(path)))

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except OSError:
            return False
        return True

    def scandir(self, path: str) -> list[DirEntry]:
        def run() -> list[DirEntry]:
            node = self.resolve(path)
            if node.is_dir:
                self._permission(node, MAY_READ)
            return self.stack.readdir(node)

        return _named(path, run)

    def listdir(self, path: str) -> list[str]:
        return [entry.name for entry in self.scandir(path)]

    def readlink(self, path: str) -> str:
        return _named(path, lambda: self.stack.readlink_node(self.resolve(path)))

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as fh:
            chunks = []
            while chunk := fh.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)

    def getxattr(self, path: str, name: str) -> bytes:
        def run() -> bytes:
            node = self.resolve(path)
            if self.creds is not None:
                access.xattr_permission(self._attr(node), self.creds, name, write=False)
            return self.stack.getxattr_node(node, name)

        return _named(path, run)

    def listxattr(self, path: str) -> list[str]:
        return _named(path, lambda: self.stack.listxattr_node(self.resolve(path)))

    # -- files -----------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> FileHandle:
        """open(2) without following a final symlink (ELOOP, as with ``O_NOFOLLOW``)."""
        return _named(path, lambda: self._open(path, flags, mode))

    def _open(self, path: str, flags: int, mode: int) -> FileHandle:
        parent, name = self._parent_of(path)
        node = self._child(parent, name)
        hook = None if self.creds is None else self._drop_privs
        if node is None:
            if not flags & os.O_CREAT:
                raise oserror(errno.ENOENT, path)
            if self.creds is not None:
                parent_st = self._attr(parent)
                access.may_create(parent_st, self.creds)
                mode = access.strip_sgid(parent_st, self.creds, stat.S_IFREG | mode) & 0o7777
            owner = self._owner()
            _, handle = self.stack.create(parent, name, flags, mode, before_write=hook, **owner)
            return handle
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise oserror(errno.EEXIST, path)
        if self.creds is not None and node.kind != stat.S_IFLNK:
            self._check_open(node, flags, path)
        return self.stack.open_node(node, flags & ~(os.O_CREAT | os.O_EXCL), before_write=hook)

    def _check_open(self, node: Node, flags: int, path: str) -> None:
        wants_write = flags & _ACCESS != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if node.is_dir and wants_write:
            raise oserror(errno.EISDIR, path)
        mask = {os.O_RDONLY: MAY_READ, os.O_WRONLY: MAY_WRITE}.get(
            flags & _ACCESS, MAY_READ | MAY_WRITE
        )
        self._permission(node, mask | (MAY_WRITE if flags & os.O_TRUNC else 0))
        if flags & os.O_TRUNC and node.kind == stat.S_IFREG:
            self._drop_privs(node)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        with self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode) as fh:
            fh.write(data)

    def truncate(self, path: str, size: int) -> None:
        def run() -> None:
            node = self.resolve(path)
            if self.creds is not None:
                if node.is_dir:
                    raise oserror(errno.EISDIR, path)
                if node.kind != stat.S_IFREG:
                    raise oserror(errno.EINVAL, path)
                self._permission(node, MAY_WRITE)
                self._drop_privs(node)
            self.stack.setattr(node, size=size)

        _named(path, run)

    # -- names -----------------------------------------------------------------------------
    def mkdir(self, path: str, mode: int = 0o755) -> None:
        def run() -> None:
            parent, name = self._new_name(path)
            mode_ = mode if self.creds is None else mode & 0o1777  # mkdir(2) drops set-id bits
            self.stack.mkdir_at(parent, name, mode_, **self._owner())

        _named(path, run)

    def mknod(self, path: str, mode: int, rdev: int = 0) -> None:
        def run() -> None:
            kind = stat.S_IFMT(mode) or stat.S_IFREG
            creds = self.creds
            if creds is not None and kind in (stat.S_IFCHR, stat.S_IFBLK) and not creds.privileged:
                raise oserror(errno.EPERM, path)
            parent, name = self._new_name(path)
            mode_ = mode
            if creds is not None:
                mode_ = access.strip_sgid(self._attr(parent), creds, kind | stat.S_IMODE(mode))
            self.stack.mknod_at(parent, name, mode_, rdev, **self._owner())

        _named(path, run)

    def symlink(self, target: str, path: str) -> None:
        def run() -> None:
            if len(os.fsencode(target)) >= PATH_MAX:
                raise oserror(errno.ENAMETOOLONG, path)
            parent, name = self._new_name(path)
            self.stack.symlink_at(parent, name, target, **self._owner())

        _named(path, run)

    def link(self, existing: str, new: str) -> None:
        def run() -> None:
            node = self.resolve(existing)
            parent, name = self._parent_of(new)
            if self.creds is not None:
                if self._child(parent, name) is not None:
                    raise oserror(errno.EEXIST, new)
                access.may_link(self._attr(node), self.creds)
                access.may_create(self._attr(parent), self.creds)
            self.stack.link_at(node, parent, name)

        _named(new, run)

    def unlink(self, path: str) -> None:
        _named(path, lambda: self.stack.unlink_at(*self._victim(path)))

    def rmdir(self, path: str) -> None:
        _named(path, lambda: self.stack.rmdir_at(*self._victim(path)))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """renameat2(2): lookups and the name checks, then the permission checks in the
        kernel's order (source, target, a directory's own write permission to move it)."""

        def run() -> None:
            old_parent, old_name = self._parent_of(old)
            new_parent, new_name = self._parent_of(new)
            if self.creds is not None:
                self._check_rename(old_parent, old_name, new_parent, new_name, flags)
            self.stack.rename_at(old_parent, old_name, new_parent, new_name, flags)

        _named(old, run)

    def _check_rename(
        self, old_parent: Node, old_name: str, new_parent: Node, new_name: str, flags: int
    ) -> None:
        assert self.creds is not None
        src = self.stack.lookup(old_parent, old_name)
        dst = self._child(new_parent, new_name)
        check_rename(old_parent, src, new_parent, dst, flags)
        if dst is src:
            return
        old_dir, new_dir = self._attr(old_parent), self._attr(new_parent)
        access.may_delete(old_dir, self._attr(src), self.creds)
        if dst is None:
            access.may_create(new_dir, self.creds)
        else:
            access.may_delete(new_dir, self._attr(dst), self.creds)
            if not flags & RENAME_EXCHANGE:
                check_rename_types(src, dst)
        if old_parent is not new_parent:
            if src.is_dir:
                self._permission(src, MAY_WRITE)
            if flags & RENAME_EXCHANGE and dst is not None and dst.is_dir:
                self._permission(dst, MAY_WRITE)

    # -- attributes ------------------------------------------------------------------------
    def chmod(self, path: str, mode: int) -> None:
        def run() -> None:
            node = self.resolve(path)
            if self.creds is not None:
                mode_ = access.chmod_mode(self._attr(node), self.creds, mode)
            else:
                mode_ = mode
            self.stack.setattr(node, mode=mode_)

        _named(path, run)

    def chown(self, path: str, uid: int, gid: int) -> None:
        def run() -> None:
            node = self.resolve(path)
            new_uid, new_gid = (None if uid == -1 else uid), (None if gid == -1 else gid)
            mode = None
            if self.creds is not None:
                st = self._attr(node)
                access.check_chown(st, self.creds, new_uid, new_gid)
                mode = access.mode_after_chown(st, self.creds, new_gid)
                silent = new_uid is None and new_gid is None
                if silent and mode is not None and not self.creds.owns(st):
                    raise oserror(errno.EPERM, path)  # dropping set-id bits is a chmod too
            self.stack.setattr(node, uid=new_uid, gid=new_gid, mode=mode)

        _named(path, run)

    def utimes(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        def run() -> None:
            node = self.resolve(path)
            if self.creds is not None:
                access.check_times(self._attr(node), self.creds)
            self.stack.setattr(node, atime_ns=atime_ns, mtime_ns=mtime_ns)

        _named(path, run)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        def run() -> None:
            node = self.resolve(path)
            if self.creds is not None:
                access.xattr_permission(self._attr(node), self.creds, name, write=True)
            self.stack.setxattr_node(node, name, value, flags)

        _named(path, run)

    def removexattr(self, path: str, name: str) -> None:
        def run() -> None:
            node = self.resolve(path)
            if self.creds is not None:
                access.xattr_permission(self._attr(node), self.creds, name, write=True)
            self.stack.removexattr_node(node, name)

        _named(path, run)


def _components(path: str) -> list[str]:
    if len(os.fsencode(path)) >= PATH_MAX:
        raise oserror(errno.ENAMETOOLONG, path)
    return [p for p in path.split("/") if p and p != "."]


def _named(path: str, call: Callable[[], T]) -> T:
    """Run *call*; an OSError without a file name gets *path*, as a syscall's would."""
    try:
        return call()
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        raise
