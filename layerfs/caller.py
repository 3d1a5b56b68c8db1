"""The path API for one caller: the kernel VFS's permission checks, then the stack.

``stack.as_caller(Credentials(1000, 1000))`` gives a :class:`CallerView` with the path methods
of :class:`layerfs.Stack` that a process with those credentials would see through a kernel
mount of the stack: search permission on every directory walked, write permission to add or
remove a name, the sticky-directory rule, the owner rules of chmod/chown/utimes and xattrs,
``protected_hardlinks``, set-id bits dropped by writes, truncates and chowns, and new objects
owned by the caller (a set-gid directory's group and bit are inherited by the stack itself).
Each check comes in the order the kernel makes it, so a failing call gives the kernel's
errno, and it comes before the stack changes anything.

The stack's own path API acts for the process without these checks, as root does.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from layerfs import access
from layerfs.access import MAY_EXEC, MAY_READ, MAY_WRITE, Credentials
from layerfs.errors import oserror
from layerfs.hostfs import RENAME_EXCHANGE

if TYPE_CHECKING:
    from layerfs.handle import FileHandle
    from layerfs.node import Node
    from layerfs.stack import Stack
    from layerfs.types import DirEntry, Stat

_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
_PATH_MAX = 4096


class CallerFile:
    """An open file of a :class:`CallerView`: a write drops set-id bits first, as the kernel's
    ``file_remove_privs`` does for a caller without CAP_FSETID."""

    def __init__(self, view: CallerView, handle: FileHandle) -> None:
        self._view = view
        self.handle = handle

    def read(self, size: int, offset: int | None = None) -> bytes:
        return self.handle.read(size, offset)

    def write(self, data: bytes, offset: int | None = None) -> int:
        if data:
            self._view._drop_privs(self.handle.node)
        return self.handle.write(data, offset)

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> CallerFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CallerView:
    """A stack's path API as *creds* sees it (see the module docstring)."""

    def __init__(self, stack: Stack, creds: Credentials) -> None:
        self.stack = stack
        self.creds = creds

    # -- walking ---------------------------------------------------------------------------
    def _attr(self, node: Node) -> Stat:
        return self.stack.getattr(node)

    def _search(self, node: Node, path: str) -> None:
        if node.kind == stat.S_IFLNK:
            raise oserror(errno.ELOOP, path)
        if not node.is_dir:
            raise oserror(errno.ENOTDIR, path)
        access.permission(self._attr(node), self.creds, MAY_EXEC)

    def resolve(self, path: str) -> Node:
        """The node at *path*, with search permission checked on every directory walked."""
        parts = _components(path)
        node = self.stack.root
        for part in parts:
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

    def _new_name(self, path: str) -> Node:
        """The parent of a name about to be created: EEXIST first, then may_create."""
        parent, name = self._parent_of(path)
        if self._child(parent, name) is not None:
            raise oserror(errno.EEXIST, path)
        access.may_create(self._attr(parent), self.creds)
        return parent

    def _victim(self, path: str) -> tuple[Node, str, Node]:
        parent, name = self._parent_of(path)
        node = self.stack.lookup(parent, name)
        access.may_delete(self._attr(parent), self._attr(node), self.creds)
        return parent, name, node

    def _drop_privs(self, node: Node) -> None:
        mode = access.mode_after_write(self._attr(node), self.creds)
        if mode is not None:
            self.stack.setattr(node, mode=mode)

    # -- reading ---------------------------------------------------------------------------
    def lstat(self, path: str) -> Stat:
        return self._attr(self.resolve(path))

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except OSError:
            return False
        return True

    def scandir(self, path: str) -> list[DirEntry]:
        node = self.resolve(path)
        if node.is_dir:
            access.permission(self._attr(node), self.creds, MAY_READ)
        return self.stack.readdir(node)

    def listdir(self, path: str) -> list[str]:
        return [entry.name for entry in self.scandir(path)]

    def readlink(self, path: str) -> str:
        return self.stack.readlink_node(self.resolve(path))

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as fh:
            chunks = []
            while chunk := fh.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)

    def getxattr(self, path: str, name: str) -> bytes:
        node = self.resolve(path)
        access.xattr_permission(self._attr(node), self.creds, name, write=False)
        return self.stack.getxattr_node(node, name)

    def listxattr(self, path: str) -> list[str]:
        return self.stack.listxattr_node(self.resolve(path))

    # -- files -----------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> CallerFile:
        """open(2) without following a final symlink (ELOOP, as with ``O_NOFOLLOW``)."""
        parent, name = self._parent_of(path)
        node = self._child(parent, name)
        if node is None:
            if not flags & os.O_CREAT:
                raise oserror(errno.ENOENT, path)
            parent_st = self._attr(parent)
            access.may_create(parent_st, self.creds)
            mode = access.strip_sgid(parent_st, self.creds, stat.S_IFREG | mode) & 0o7777
            uid, gid = self.creds.uid, self.creds.gid
            _, handle = self.stack.create(parent, name, flags, mode, uid=uid, gid=gid)
            return CallerFile(self, handle)
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise oserror(errno.EEXIST, path)
        if node.kind == stat.S_IFLNK:
            raise oserror(errno.ELOOP, path)
        wants_write = flags & _ACCESS != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if node.is_dir and wants_write:
            raise oserror(errno.EISDIR, path)
        mask = {os.O_RDONLY: MAY_READ, os.O_WRONLY: MAY_WRITE}.get(
            flags & _ACCESS, MAY_READ | MAY_WRITE
        )
        if flags & os.O_TRUNC:
            mask |= MAY_WRITE
        access.permission(self._attr(node), self.creds, mask)
        if flags & os.O_TRUNC and node.kind == stat.S_IFREG:
            self._drop_privs(node)
        return CallerFile(self, self.stack.open_node(node, flags & ~(os.O_CREAT | os.O_EXCL)))

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        with self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode) as fh:
            fh.write(data)

    def truncate(self, path: str, size: int) -> None:
        node = self.resolve(path)
        if node.is_dir:
            raise oserror(errno.EISDIR, path)
        if node.kind != stat.S_IFREG:
            raise oserror(errno.EINVAL, path)
        access.permission(self._attr(node), self.creds, MAY_WRITE)
        self._drop_privs(node)
        self.stack.setattr(node, size=size)

    # -- names -----------------------------------------------------------------------------
    def mkdir(self, path: str, mode: int = 0o755) -> None:
        parent = self._new_name(path)
        name = _components(path)[-1]
        uid, gid = self.creds.uid, self.creds.gid
        self.stack.mkdir_at(parent, name, mode & 0o1777, uid=uid, gid=gid)

    def mknod(self, path: str, mode: int, rdev: int = 0) -> None:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and not self.creds.privileged:
            raise oserror(errno.EPERM, path)
        parent = self._new_name(path)
        mode = access.strip_sgid(self._attr(parent), self.creds, kind | stat.S_IMODE(mode))
        name = _components(path)[-1]
        self.stack.mknod_at(parent, name, mode, rdev, uid=self.creds.uid, gid=self.creds.gid)

    def symlink(self, target: str, path: str) -> None:
        if len(os.fsencode(target)) >= _PATH_MAX:
            raise oserror(errno.ENAMETOOLONG, path)
        parent = self._new_name(path)
        name = _components(path)[-1]
        self.stack.symlink_at(parent, name, target, uid=self.creds.uid, gid=self.creds.gid)

    def link(self, existing: str, new: str) -> None:
        node = self.resolve(existing)
        parent, name = self._parent_of(new)
        if self._child(parent, name) is not None:
            raise oserror(errno.EEXIST, new)
        access.may_link(self._attr(node), self.creds)
        access.may_create(self._attr(parent), self.creds)
        self.stack.link_at(node, parent, name)

    def unlink(self, path: str) -> None:
        parent, name, _ = self._victim(path)
        self.stack.unlink_at(parent, name)

    def rmdir(self, path: str) -> None:
        parent, name, _ = self._victim(path)
        self.stack.rmdir_at(parent, name)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """renameat2(2): lookups and the name checks, then the permission checks in the
        kernel's order (source, target, a directory's own write permission to move it)."""
        old_parent, old_name = self._parent_of(old)
        new_parent, new_name = self._parent_of(new)
        src = self.stack.lookup(old_parent, old_name)
        dst = self._child(new_parent, new_name)
        self.stack.check_rename(old_parent, src, new_parent, dst, flags)
        if dst is src:
            return
        old_dir, new_dir = self._attr(old_parent), self._attr(new_parent)
        access.may_delete(old_dir, self._attr(src), self.creds)
        if dst is None:
            access.may_create(new_dir, self.creds)
        else:
            access.may_delete(new_dir, self._attr(dst), self.creds)
            if not flags & RENAME_EXCHANGE:
                self.stack.check_rename_types(src, dst)
        if old_parent is not new_parent:
            if src.is_dir:
                access.permission(self._attr(src), self.creds, MAY_WRITE)
            if flags & RENAME_EXCHANGE and dst is not None and dst.is_dir:
                access.permission(self._attr(dst), self.creds, MAY_WRITE)
        self.stack.rename_at(old_parent, old_name, new_parent, new_name, flags)

    # -- attributes ------------------------------------------------------------------------
    def chmod(self, path: str, mode: int) -> None:
        node = self.resolve(path)
        self.stack.setattr(node, mode=access.chmod_mode(self._attr(node), self.creds, mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        node = self.resolve(path)
        st = self._attr(node)
        new_uid, new_gid = (None if uid == -1 else uid), (None if gid == -1 else gid)
        access.check_chown(st, self.creds, new_uid, new_gid)
        mode = access.mode_after_chown(st, self.creds, new_gid)
        if new_uid is None and new_gid is None and mode is not None and not self.creds.owns(st):
            raise oserror(errno.EPERM, path)  # dropping set-id bits is a chmod of its own
        self.stack.setattr(node, uid=new_uid, gid=new_gid, mode=mode)

    def utimes(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        node = self.resolve(path)
        access.check_times(self._attr(node), self.creds)
        self.stack.setattr(node, atime_ns=atime_ns, mtime_ns=mtime_ns)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        node = self.resolve(path)
        access.xattr_permission(self._attr(node), self.creds, name, write=True)
        self.stack.setxattr_node(node, name, value, flags)

    def removexattr(self, path: str, name: str) -> None:
        node = self.resolve(path)
        access.xattr_permission(self._attr(node), self.creds, name, write=True)
        self.stack.removexattr_node(node, name)


def _components(path: str) -> list[str]:
    if len(os.fsencode(path)) >= _PATH_MAX:
        raise oserror(errno.ENAMETOOLONG, path)
    return [p for p in path.split("/") if p and p != "."]
