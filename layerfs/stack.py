"""The public stack: lowers + optional upper, with POSIX-like operations on the merged view.

Two faces over one implementation (see ``docs/api.md``): a *node* API for inode-based callers
such as the FUSE mount (``lookup``, ``getattr``, ``mkdir_at``...), and a *path* API for
programs and tests (``lstat``, ``mkdir``, ``rename``...). Every operation raises ``OSError``
with the errno kernel overlayfs gives; every change of the merged view is written to the upper
directory in overlayfs format (``docs/semantics.md`` lists where layerfs differs on purpose).

All calls are thread-safe: namespace changes and copy-ups serialise on the stack's lock, while
reads and writes of open files go to their host descriptors without it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from layerfs import copyup, hostfs
from layerfs.access import Credentials
from layerfs.caller import CallerView
from layerfs.core import StackCore
from layerfs.errors import ConfigError, oserror
from layerfs.handle import FileHandle
from layerfs.node import DIR, LNK, ONLY_UPPER, REG, UPPER, Alias, MergedIndex, Node
from layerfs.options import StackOptions, StackSpec, parse_mount_options
from layerfs.types import DirEntry, FileKind, Stat, StatFs
from layerfs.whiteout import (
    WHITEOUT_PREFIX,
    WhiteoutStyle,
    is_private_xattr,
    is_whiteout_stat,
    oci_whiteout_name,
)

log = logging.getLogger(__name__)

RENAME_NOREPLACE = hostfs.RENAME_NOREPLACE
RENAME_EXCHANGE = hostfs.RENAME_EXCHANGE
_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
_NAME_MAX = 255
_PATH_MAX = 4096  # bytes of a path argument, its terminating NUL included

PathArg = str | os.PathLike[str]


class Stack(StackCore):
    """Read-only lower layers (top-most first) under an optional writable upper layer."""

    def __init__(
        self,
        lowers: Sequence[PathArg],
        upper: PathArg | None = None,
        work: PathArg | None = None,
        *,
        options: StackOptions | None = None,
    ) -> None:
        spec = StackSpec(
            tuple(Path(p) for p in lowers),
            Path(upper) if upper is not None else None,
            Path(work) if work is not None else None,
            options or StackOptions(),
        )
        super().__init__(spec)

    def as_caller(self, creds: Credentials) -> CallerView:
        """The path API as the caller *creds* would see it through a kernel mount: with the
        VFS's permission checks (see :mod:`layerfs.caller`)."""
        return CallerView(self, creds)

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

    def close(self) -> None:
        """Release host descriptors; open FileHandles keep their own."""
        with self.lock:
            self._close_tree(self.root)
            self._close_roots()

    def _close_tree(self, node: Node) -> None:
        for child in node.children.values():
            self._close_tree(child)
        node.close_fds()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # == node API: reading ==================================================================
    def lookup(self, parent: Node, name: str) -> Node:
        """The child *name* of directory *parent* (ENOENT, ENOTDIR)."""
        with self.lock:
            return self.lookup_locked(parent, name)

    def lookup_attr(self, parent: Node, name: str) -> tuple[Node, Stat]:
        """:meth:`lookup` and :meth:`getattr` in one call, with one host stat for a new node."""
        with self.lock:
            node, st = self.lookup_stat_locked(parent, name)
            if st is None or len(node.aliases) > 1:  # a hard link's name may be stale
                return node, self._getattr(node)
            return node, self.to_stat(node, st)

    def getattr(self, node: Node) -> Stat:
        with self.lock:
            return self._getattr(node)

    def _getattr(self, node: Node) -> Stat:
        if not node.aliases:
            raise oserror(errno.ENOENT)
        return self.to_stat(node, self.host_stat(node))

    def readdir(self, node: Node) -> list[DirEntry]:
        """A snapshot of the merged listing, sorted by name, without ``.`` and ``..``."""
        with self.lock:
            return [self._dir_entry(node, name) for name in self.listdir_node(node)]

    def listdir_node(self, node: Node) -> list[str]:
        """A snapshot of the merged listing's names, sorted; cheaper than :meth:`readdir`."""
        with self.lock:
            if not node.is_dir:
                raise oserror(errno.ENOTDIR)
            if not node.aliases:
                return []
            return list(self.index(node).names())

    def _dir_entry(self, parent: Node, name: str) -> DirEntry:
        child = self.lookup_locked(parent, name)
        return DirEntry(name, child.ino, FileKind(child.kind))

    def readlink_node(self, node: Node) -> str:
        if node.kind != LNK:
            raise oserror(errno.EINVAL)
        dirfd, name = self.location(node)
        return os.readlink(name, dir_fd=dirfd)

    def statfs(self) -> StatFs:
        fd = self._roots[UPPER] if self.has_upper else self._roots[1]
        st = os.statvfs(fd)
        return StatFs(
            st.f_bsize,
            st.f_frsize,
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_favail,
            st.f_namemax,
        )

    # == node API: files ====================================================================
    def open_node(self, node: Node, flags: int) -> FileHandle:
        """Open *node*; write access or ``O_TRUNC`` copies it up first."""
        if node.kind == LNK:
            raise oserror(errno.ELOOP)
        wants_write = (flags & _ACCESS) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        with self.lock:
            if node.is_dir and wants_write:
                raise oserror(errno.EISDIR)
            if not node.aliases:
                raise oserror(errno.ENOENT)
            if wants_write:
                self.check_writable()
                self._prepare_write(node, 0 if flags & os.O_TRUNC else None)
                dirfd, name = self.upper_location(node)
            else:
                dirfd, name = self._read_location(node)
            host_flags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY)
            fd = os.open(name, host_flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            node.handles += 1
            return FileHandle(self, node, fd, flags)

    def _prepare_write(self, node: Node, truncate_to: int | None) -> None:
        """Copy *node* up for writing, copying no more data than will survive a truncate."""
        if node.kind != REG:
            copyup.copy_up(self, node)
            return
        if truncate_to is None and not node.metacopy:
            copyup.copy_up(self, node, data=True)
            return
        copyup.copy_up(self, node, data=False)  # a metacopy file stays one, for now
        if node.metacopy:  # then its data, no more of it than survives the truncate
            copyup.complete_metacopy(self, node, upto=truncate_to, keep_times=False)

    def _read_location(self, node: Node) -> tuple[int, str]:
        if node.data_dirfd is not None:
            return node.data_dirfd, node.data_name
        return self.location(node)

    def _reopen(self, node: Node, flags: int) -> int | None:
        """A fresh descriptor for a handle whose node moved (copy-up, data completed)."""
        with self.lock:
            if not node.aliases:
                return None
            writable = (flags & _ACCESS) != os.O_RDONLY
            dirfd, name = self.upper_location(node) if writable else self._read_location(node)
            host_flags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_TRUNC)
            return os.open(name, host_flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)

    def _fstat(self, node: Node, fd: int) -> Stat:
        with self.lock:
            if node.aliases:
                return self._getattr(node)
        return self.to_stat(node, os.fstat(fd))

    def _release(self, node: Node) -> None:
        with self.lock:
            node.handles -= 1

    # == node API: attributes ===============================================================
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
        """Change attributes; only ``size`` ever copies file data (and only what survives)."""
        with self.lock:
            if not node.aliases:
                raise oserror(errno.ENOENT)
            if (mode, uid, gid, size, atime_ns, mtime_ns) == (None,) * 6:
                return self._getattr(node)
            self.check_writable()
            if size is not None:
                self._truncate(node, size)
            else:
                copyup.copy_up(self, node, data=False)
            dirfd, name = self.upper_location(node)
            if uid is not None or gid is not None:
                hostfs.chown_at(dirfd, name, -1 if uid is None else uid, -1 if gid is None else gid)
            if mode is not None:
                hostfs.chmod_at(dirfd, name, mode)
            if atime_ns is not None or mtime_ns is not None:
                st = hostfs.lstat_at(dirfd, name)
                hostfs.utime_at(
                    dirfd,
                    name,
                    st.st_atime_ns if atime_ns is None else atime_ns,
                    st.st_mtime_ns if mtime_ns is None else mtime_ns,
                )
            return self._getattr(node)

    def _truncate(self, node: Node, size: int) -> None:
        if node.is_dir:
            raise oserror(errno.EISDIR)
        if node.kind != REG:
            raise oserror(errno.EINVAL)
        if size < 0:
            raise oserror(errno.EINVAL)
        self._prepare_write(node, size)
        dirfd, name = self.upper_location(node)
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    # == node API: xattrs ===================================================================
    def getxattr_node(self, node: Node, name: str) -> bytes:
        """One xattr's value (ENODATA when missing).

        ``ls -l`` asks for two xattrs of every file and most lower files have none: that
        answer is remembered per lower-only node, since lower objects never change.
        """
        _check_xattr_name(name)
        with self.lock:
            if node.no_xattrs and node.lower_only:
                raise oserror(errno.ENODATA, name)
            dirfd, host_name = self.location(node)
            with hostfs.opath(dirfd, host_name) as path:
                if node.lower_only and not os.listxattr(path):
                    node.no_xattrs = True
                    raise oserror(errno.ENODATA, name)
                return os.getxattr(path, name)

    def listxattr_node(self, node: Node) -> list[str]:
        with self.lock:
            dirfd, host_name = self.location(node)
            return [a for a in hostfs.listxattr_at(dirfd, host_name) if not is_private_xattr(a)]

    def setxattr_node(self, node: Node, name: str, value: bytes, flags: int = 0) -> None:
        _check_xattr_name(name)
        with self.lock:
            if not node.aliases:
                raise oserror(errno.ENOENT)
            self.check_writable()
            copyup.copy_up(self, node, data=False)
            dirfd, host_name = self.upper_location(node)
            hostfs.setxattr_at(dirfd, host_name, name, value, flags)

    def removexattr_node(self, node: Node, name: str) -> None:
        _check_xattr_name(name)
        with self.lock:
            if not node.aliases:
                raise oserror(errno.ENOENT)
            self.check_writable()
            if not node.in_upper:
                self.getxattr_node(node, name)  # ENODATA without a needless copy-up
            copyup.copy_up(self, node, data=False)
            dirfd, host_name = self.upper_location(node)
            hostfs.removexattr_at(dirfd, host_name, name)

    # == node API: creating =================================================================
    def create(
        self,
        parent: Node,
        name: str,
        flags: int,
        mode: int,
        uid: int | None = None,
        gid: int | None = None,
    ) -> tuple[Node, FileHandle]:
        """Create (or, without ``O_EXCL``, open) the regular file *name* in *parent*."""
        with self.lock:
            try:
                existing = self.lookup_locked(parent, name)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if flags & os.O_EXCL:
                    raise oserror(errno.EEXIST, name)
                return existing, self.open_node(existing, flags & ~os.O_CREAT)
            node = self._place_new(parent, name, REG, mode, uid, gid, _make_file)
            return node, self.open_node(node, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))

    def mkdir_at(
        self, parent: Node, name: str, mode: int, uid: int | None = None, gid: int | None = None
    ) -> Node:
        with self.lock:
            return self._place_new(parent, name, DIR, mode, uid, gid, _make_dir)

    def mknod_at(
        self,
        parent: Node,
        name: str,
        mode: int,
        rdev: int = 0,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Node:
        kind = stat.S_IFMT(mode) or REG
        if kind in (DIR, LNK):
            raise oserror(errno.EINVAL, name)

        def make(dirfd: int, host_name: str) -> None:
            if kind == REG:
                _make_file(dirfd, host_name)
            else:
                os.mknod(host_name, kind | 0o600, rdev, dir_fd=dirfd)

        with self.lock:
            return self._place_new(parent, name, kind, mode, uid, gid, make)

    def symlink_at(
        self, parent: Node, name: str, target: str, uid: int | None = None, gid: int | None = None
    ) -> Node:
        if len(os.fsencode(target)) >= _PATH_MAX:
            raise oserror(errno.ENAMETOOLONG, name)

        def make(dirfd: int, host_name: str) -> None:
            os.symlink(target, host_name, dir_fd=dirfd)

        with self.lock:
            return self._place_new(parent, name, LNK, 0o777, uid, gid, make)

    def link_at(self, node: Node, new_parent: Node, new_name: str) -> Node:
        """Give *node* another name; the node itself is returned."""
        with self.lock:
            if not node.aliases:
                raise oserror(errno.ENOENT, new_name)
            self._check_new_name(new_parent, new_name)  # EEXIST comes before EPERM
            if node.is_dir:
                raise oserror(errno.EPERM, new_name)
            self.check_writable()
            copyup.copy_up(self, node, data=True)
            src_fd, src_name = self.upper_location(node)

            def make(dirfd: int, host_name: str) -> None:
                os.link(
                    src_name, host_name, src_dir_fd=src_fd, dst_dir_fd=dirfd, follow_symlinks=False
                )

            self._put_in_upper(new_parent, new_name, node.kind, make, fixup=None)
            alias = Alias(new_parent, new_name, True)
            node.aliases.append(alias)
            new_parent.children[new_name] = node
            st = hostfs.lstat_at(*self.upper_location(node, alias))
            self.register_upper(node, st)
            return node

    def _check_new_name(self, parent: Node, name: str) -> None:
        """EEXIST / ENOENT / ENOTDIR checks for a name about to be created."""
        _check_name(name)
        if not parent.is_dir:
            raise oserror(errno.ENOTDIR, name)
        if not parent.aliases:
            raise oserror(errno.ENOENT, name)
        try:
            self.lookup_locked(parent, name)
        except FileNotFoundError:
            return
        raise oserror(errno.EEXIST, name)

    def _place_new(
        self,
        parent: Node,
        name: str,
        kind: int,
        mode: int,
        uid: int | None,
        gid: int | None,
        make: Callable[[int, str], None],
    ) -> Node:
        self._check_new_name(parent, name)
        self.check_writable()
        owner, mode = self._new_owner(parent, kind, mode, uid, gid)

        def fixup(dirfd: int, host_name: str, opaque: bool) -> None:
            hostfs.chown_at(dirfd, host_name, *owner)
            if kind != LNK:
                hostfs.chmod_at(dirfd, host_name, mode)
            if opaque:
                hostfs.setxattr_at(dirfd, host_name, self.options.upper_format.opaque_xattr, b"y")

        opaque = self._put_in_upper(parent, name, kind, make, fixup)
        st = hostfs.lstat_at(self.dirfd(parent, UPPER), name)
        node = Node(self.new_ino(st), kind, ONLY_UPPER)
        node.opaque = opaque
        node.aliases.append(Alias(parent, name, True))
        if kind == DIR:
            node.index = MergedIndex()
        parent.children[name] = node
        return node

    def _new_owner(
        self, parent: Node, kind: int, mode: int, uid: int | None, gid: int | None
    ) -> tuple[tuple[int, int], int]:
        """Owner and mode of a new object (``inode_init_owner``, a filesystem's own rule).

        The caller's uid and gid (the process's when not given); in a set-gid directory the
        directory's group instead, and a new directory inherits the set-gid bit.
        """
        owner = (os.geteuid() if uid is None else uid, os.getegid() if gid is None else gid)
        parent_st = self._getattr(parent)
        if parent_st.mode & stat.S_ISGID:
            owner = (owner[0], parent_st.gid)
            if kind == DIR:
                mode |= stat.S_ISGID
        return owner, mode

    def _put_in_upper(
        self,
        parent: Node,
        name: str,
        kind: int,
        make: Callable[[int, str], None],
        fixup: Callable[[int, str, bool], None] | None,
    ) -> bool:
        """Create an object at *name* in *parent*'s upper dir, replacing a whiteout atomically.

        The object is made in the work directory when a whiteout must be replaced, so the
        merged view never shows the lower object again in between. Returns whether the new
        object is an opaque directory (a directory created over a whiteout, as the kernel does).
        """
        copyup.copy_up(self, parent)
        index = self.index(parent)
        upper_fd = self.dirfd(parent, UPPER)
        over = name in index.upper_whiteouts
        # the kernel's rule: a new directory over a whiteout or in a merged parent is opaque
        opaque = kind == DIR and (over or any(pos != UPPER for pos in parent.layers))
        if not over:
            make(upper_fd, name)
            if fixup is not None:
                fixup(upper_fd, name, opaque)
        else:
            self._replace_whiteout(upper_fd, name, kind, make, fixup, opaque)
            index.upper_whiteouts.discard(name)
        index.put(name, ((UPPER, kind),))
        return opaque

    def _replace_whiteout(
        self,
        upper_fd: int,
        name: str,
        kind: int,
        make: Callable[[int, str], None],
        fixup: Callable[[int, str, bool], None] | None,
        opaque: bool,
    ) -> None:
        tmp = self.tmpname()
        make(self.work_fd, tmp)
        try:
            if fixup is not None:
                fixup(self.work_fd, tmp, opaque)
            existing = hostfs.lstat_or_none(upper_fd, name)
            if existing is not None and is_whiteout_stat(existing):
                if kind == DIR:
                    hostfs.rename_at(self.work_fd, tmp, upper_fd, name, hostfs.RENAME_EXCHANGE)
                    os.unlink(tmp, dir_fd=self.work_fd)
                else:
                    hostfs.rename_at(self.work_fd, tmp, upper_fd, name)
            else:
                hostfs.rename_at(self.work_fd, tmp, upper_fd, name, hostfs.RENAME_NOREPLACE)
                _drop_oci_whiteout(upper_fd, name)
        except BaseException:
            hostfs.remove_tree(self.work_fd, tmp)
            raise

    # == node API: removing =================================================================
    def unlink_at(self, parent: Node, name: str) -> None:
        with self.lock:
            self.check_writable()
            node = self.lookup_locked(parent, name)
            if node.is_dir:
                raise oserror(errno.EISDIR, name)
            self._remove_name(parent, name, node)

    def rmdir_at(self, parent: Node, name: str) -> None:
        with self.lock:
            self.check_writable()
            if name == ".":
                raise oserror(errno.EINVAL, name)
            node = self.lookup_locked(parent, name)
            if not node.is_dir:
                raise oserror(errno.ENOTDIR, name)
            if node is self.root or name == "..":
                raise oserror(errno.ENOTEMPTY if name == ".." else errno.EBUSY, name)
            if len(self.index(node)):
                raise oserror(errno.ENOTEMPTY, name)
            self._remove_name(parent, name, node)

    def _remove_name(self, parent: Node, name: str, node: Node) -> None:
        """Take *name* out of the merged view, leaving a whiteout where a lower has it."""
        alias = _alias_at(node, parent, name)
        copyup.copy_up(self, parent)
        index = self.index(parent)
        upper_fd = self.dirfd(parent, UPPER)
        needs_whiteout = self.lower_positive(parent, name)
        if needs_whiteout:
            self._check_whiteout_fits(name)
        self._keep_link_count(node)
        if alias.in_upper:
            self._forget_host(upper_fd, name)
            self._remove_upper(upper_fd, name, node.is_dir, needs_whiteout)
        elif needs_whiteout:
            self._make_whiteout(upper_fd, name)
        if needs_whiteout:
            index.upper_whiteouts.add(name)
        index.drop(name)
        parent.children.pop(name, None)
        node.aliases.remove(alias)
        if node.is_dir:
            node.close_fds()

    def _keep_link_count(self, node: Node) -> None:
        """Before one name of a lower hard link goes, copy the object up with all its names.

        The other names then count the links still visible (their upper object's st_nlink),
        as the kernel's do with ``index=on`` (it copies up into its index for the same
        reason). Left in the lower, they would keep reporting the lower's old count.
        """
        if node.is_dir or node.in_upper:
            return
        if self.host_stat(node).st_nlink > 1:
            copyup.copy_up(self, node, data=False)

    def _remove_upper(self, upper_fd: int, name: str, is_dir: bool, whiteout: bool) -> None:
        chardev = self.options.upper_format.whiteouts is WhiteoutStyle.CHARDEV
        if whiteout and chardev:
            tmp = self.tmpname()
            hostfs.rename_at(upper_fd, name, self.work_fd, tmp, hostfs.RENAME_WHITEOUT)
            hostfs.remove_tree(self.work_fd, tmp)
            return
        if whiteout:
            self._make_whiteout(upper_fd, name)
        if not is_dir:
            os.unlink(name, dir_fd=upper_fd)
            return
        tmp = self.tmpname()
        hostfs.rename_at(upper_fd, name, self.work_fd, tmp)
        hostfs.remove_tree(self.work_fd, tmp)

    def _forget_host(self, upper_fd: int, name: str) -> None:
        """The upper object *name* is about to go: free its host identity for reuse."""
        st = hostfs.lstat_or_none(upper_fd, name)
        if st is not None and (stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1):
            self.forget_upper(st)

    def _make_whiteout(self, upper_fd: int, name: str) -> None:
        if self.options.upper_format.whiteouts is WhiteoutStyle.CHARDEV:
            hostfs.make_whiteout(upper_fd, name)
        else:
            _make_file(upper_fd, self._oci_whiteout(name))

    def _oci_whiteout(self, name: str) -> str:
        """The ``.wh.`` file deleting *name*; ENAMETOOLONG where none can exist.

        Asked before anything changes, so an operation that cannot leave its whiteout fails
        whole (only the ``.wh.`` style has this limit; a 0/0 device takes the name itself).
        """
        marker = oci_whiteout_name(name)
        if marker is None:
            raise oserror(errno.ENAMETOOLONG, name)
        return marker

    def _check_whiteout_fits(self, name: str) -> None:
        if self.options.upper_format.whiteouts is WhiteoutStyle.WH_FILE:
            self._oci_whiteout(name)

    # == node API: rename ===================================================================
    def rename_at(
        self, old_parent: Node, old_name: str, new_parent: Node, new_name: str, flags: int = 0
    ) -> None:
        """rename(2)/renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE; never EXDEV.

        A directory that merges lower content is first replaced by a complete opaque copy in
        the upper layer (no ``redirect`` xattrs), then renamed there; the old name is whited
        out where a lower layer has it.
        """
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise oserror(errno.EINVAL)
        with self.lock:
            self.check_writable()
            src = self.lookup_locked(old_parent, old_name)
            _check_name(new_name)
            if not new_parent.is_dir:
                raise oserror(errno.ENOTDIR, new_name)
            try:
                dst: Node | None = self.lookup_locked(new_parent, new_name)
            except FileNotFoundError:
                dst = None
            if old_name in (".", "..") or new_name in (".", ".."):
                raise oserror(errno.EBUSY)
            self.check_rename(old_parent, src, new_parent, dst, flags)
            if dst is src:
                return  # same object (or the same hard link): nothing to do, as POSIX says
            if flags & RENAME_EXCHANGE:
                assert dst is not None
                self._exchange(old_parent, old_name, src, new_parent, new_name, dst)
                return
            self.check_rename_types(src, dst)
            if dst is not None and dst.is_dir and len(self.index(dst)):
                raise oserror(errno.ENOTEMPTY)
            self._rename(old_parent, old_name, src, new_parent, new_name, dst)

    def check_rename(
        self, old_parent: Node, src: Node, new_parent: Node, dst: Node | None, flags: int
    ) -> None:
        """The checks renameat2(2) makes on names before any permission, in its order."""
        if flags & RENAME_NOREPLACE and dst is not None:
            raise oserror(errno.EEXIST)
        if flags & RENAME_EXCHANGE and dst is None:
            raise oserror(errno.ENOENT)
        if src is new_parent or (src.is_dir and src.is_ancestor_of(new_parent)):
            raise oserror(errno.EINVAL)  # the source is an ancestor of the target
        if dst is not None and dst.is_dir and dst.is_ancestor_of(old_parent):
            raise oserror(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)

    @staticmethod
    def check_rename_types(src: Node, dst: Node | None) -> None:
        """ENOTDIR or EISDIR for a rename over an object of the other kind."""
        if dst is None:
            return
        if src.is_dir and not dst.is_dir:
            raise oserror(errno.ENOTDIR)
        if not src.is_dir and dst.is_dir:
            raise oserror(errno.EISDIR)

    def _rename(
        self,
        old_parent: Node,
        old_name: str,
        src: Node,
        new_parent: Node,
        new_name: str,
        dst: Node | None,
    ) -> None:
        src_alias = _alias_at(src, old_parent, old_name)
        if self.lower_positive(old_parent, old_name):
            self._check_whiteout_fits(old_name)
        self._make_movable(src, src_alias)
        if dst is not None:
            self._keep_link_count(dst)
        copyup.copy_up(self, new_parent)
        old_index, new_index = self.index(old_parent), self.index(new_parent)
        old_fd, new_fd = self.dirfd(old_parent, UPPER), self.dirfd(new_parent, UPPER)
        leave_whiteout = self.lower_positive(old_parent, old_name)
        if dst is not None:
            self._clear_target(new_parent, new_name, dst, new_fd)
        if src.is_dir:
            self._opaque_for_move(src, new_parent)
        self._move_in_upper(
            old_fd, old_name, new_fd, new_name, new_index, src.is_dir, leave_whiteout
        )
        old_index.drop(old_name)
        old_parent.children.pop(old_name, None)
        if leave_whiteout:
            old_index.upper_whiteouts.add(old_name)
        new_index.upper_whiteouts.discard(new_name)
        new_index.put(new_name, ((UPPER, src.kind),))
        src_alias.parent, src_alias.name = new_parent, new_name
        new_parent.children[new_name] = src

    def _make_movable(self, node: Node, alias: Alias) -> None:
        """Bring *node* wholly into the upper under *alias*, so a host rename can move it."""
        if node.is_dir:
            if any(pos != UPPER for pos in node.layers):
                self._materialize(node)
        else:
            copyup.copy_up(self, node, alias, data=True)

    def _clear_target(self, parent: Node, name: str, dst: Node, upper_fd: int) -> None:
        """Drop the object a rename replaces from the node tree (and an upper dir from disk)."""
        dst_alias = _alias_at(dst, parent, name)
        if dst_alias.in_upper:
            self._forget_host(upper_fd, name)
        if dst.is_dir and dst_alias.in_upper:
            tmp = self.tmpname()
            hostfs.rename_at(upper_fd, name, self.work_fd, tmp)
            hostfs.remove_tree(self.work_fd, tmp)
        dst.aliases.remove(dst_alias)
        if dst.is_dir:
            dst.close_fds()
        parent.children.pop(name, None)
        self.index(parent).drop(name)

    def _opaque_for_move(self, node: Node, new_parent: Node) -> None:
        """A directory moved into a merged parent is marked opaque, as the kernel does."""
        if node.opaque or all(pos == UPPER for pos in new_parent.layers):
            return
        dirfd, name = self.upper_location(node)
        hostfs.setxattr_at(dirfd, name, self.options.upper_format.opaque_xattr, b"y")
        node.opaque = True

    def _move_in_upper(
        self,
        old_fd: int,
        old_name: str,
        new_fd: int,
        new_name: str,
        new_index: MergedIndex,
        is_dir: bool,
        leave_whiteout: bool,
    ) -> None:
        chardev = self.options.upper_format.whiteouts is WhiteoutStyle.CHARDEV
        target = hostfs.lstat_or_none(new_fd, new_name)
        if target is not None and is_whiteout_stat(target) and is_dir:
            hostfs.rename_at(old_fd, old_name, new_fd, new_name, hostfs.RENAME_EXCHANGE)
            if not leave_whiteout:
                os.unlink(old_name, dir_fd=old_fd)
            elif not chardev:
                os.unlink(old_name, dir_fd=old_fd)
                self._make_whiteout(old_fd, old_name)
            return
        flags = hostfs.RENAME_WHITEOUT if leave_whiteout and chardev else 0
        hostfs.rename_at(old_fd, old_name, new_fd, new_name, flags)
        if target is None:
            _drop_oci_whiteout(new_fd, new_name)
        if leave_whiteout and not chardev:
            self._make_whiteout(old_fd, old_name)

    def _exchange(
        self, old_parent: Node, old_name: str, src: Node, new_parent: Node, new_name: str, dst: Node
    ) -> None:
        for moving, target_parent in ((src, new_parent), (dst, old_parent)):
            if moving.is_dir and (moving is target_parent or moving.is_ancestor_of(target_parent)):
                raise oserror(errno.EINVAL)
        src_alias, dst_alias = (
            _alias_at(src, old_parent, old_name),
            _alias_at(dst, new_parent, new_name),
        )
        self._make_movable(src, src_alias)
        self._make_movable(dst, dst_alias)
        if src.is_dir:
            self._opaque_for_move(src, new_parent)
        if dst.is_dir:
            self._opaque_for_move(dst, old_parent)
        hostfs.rename_at(
            self.dirfd(old_parent, UPPER),
            old_name,
            self.dirfd(new_parent, UPPER),
            new_name,
            hostfs.RENAME_EXCHANGE,
        )
        self.index(old_parent).put(old_name, ((UPPER, dst.kind),))
        self.index(new_parent).put(new_name, ((UPPER, src.kind),))
        src_alias.parent, src_alias.name = new_parent, new_name
        dst_alias.parent, dst_alias.name = old_parent, old_name
        old_parent.children[old_name] = dst
        new_parent.children[new_name] = src

    # -- whole-directory copy-up ------------------------------------------------------------
    def _materialize(self, node: Node) -> None:
        """Replace a directory that merges lower content by a complete, opaque upper copy."""
        alias = node.aliases[0]
        assert alias.parent is not None
        copyup.copy_up(self, alias.parent)
        tmp = self.tmpname()
        fds: list[int] = []
        try:
            self._copy_tree(node, self.work_fd, tmp, fds)
            hostfs.setxattr_at(self.work_fd, tmp, self.options.upper_format.opaque_xattr, b"y")
            upper_fd = self.dirfd(alias.parent, UPPER)
            if alias.in_upper:
                hostfs.rename_at(self.work_fd, tmp, upper_fd, alias.name, hostfs.RENAME_EXCHANGE)
            else:
                hostfs.rename_at(self.work_fd, tmp, upper_fd, alias.name, hostfs.RENAME_NOREPLACE)
        except BaseException:
            hostfs.remove_tree(self.work_fd, tmp)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        hostfs.remove_tree(self.work_fd, tmp)
        self._rehome(node, alias)
        node.opaque = True
        parent_index = self.index(alias.parent)
        if alias.name in parent_index:
            parent_index.put(alias.name, ((UPPER, DIR),))

    def _copy_tree(self, node: Node, dst_fd: int, dst_name: str, fds: list[int]) -> None:
        src_fd, src_name = self.location(node)
        st = hostfs.lstat_at(src_fd, src_name)
        os.mkdir(dst_name, 0o700, dir_fd=dst_fd)
        child_fd = os.open(dst_name, hostfs.O_PATH_DIR, dir_fd=dst_fd)
        fds.append(child_fd)
        for name in list(self.index(node).names()):
            child = self.lookup_locked(node, name)
            if child.is_dir:
                self._copy_tree(child, child_fd, name, fds)
            else:
                self._copy_leaf(child, child_fd, name)
        _copy_attrs(src_fd, src_name, dst_fd, dst_name, st)
        self._carry_origin(node, src_fd, src_name, dst_fd, dst_name)
        if self.index(node).names():
            self.mark_impure(child_fd)
        self.register_copy(node, hostfs.lstat_at(dst_fd, dst_name))

    def _carry_origin(self, node: Node, src_fd: int, src: str, dst_fd: int, dst: str) -> None:
        """The copy of *node* records where the object first came from (see copyup)."""
        if not node.in_upper:
            copyup.set_origin(self, src_fd, src, dst_fd, dst)
            return
        value = self._read_origin_value(src_fd, src)
        if value is not None:
            hostfs.setxattr_at(dst_fd, dst, self.options.upper_format.origin_xattr, value)

    def _copy_leaf(self, node: Node, dst_fd: int, name: str) -> None:
        """Put one non-directory of a directory being copied whole into the new tree.

        An object that is (or, as a lower hard link, becomes) an upper object is hard-linked
        into the tree, so links to names outside the directory survive the rename; a lower
        object with one name is copied.
        """
        if node.in_upper or self.host_stat(node).st_nlink > 1:
            copyup.copy_up(self, node, data=True)
            src_fd, src_name = self.upper_location(node)
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            return
        src_fd, src_name = self.location(node)
        st = hostfs.lstat_at(src_fd, src_name)
        if node.kind == REG:
            src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                dst = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dst_fd
                )
                try:
                    hostfs.copy_data(src, dst, st.st_size)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif node.kind == LNK:
            os.symlink(os.readlink(src_name, dir_fd=src_fd), name, dir_fd=dst_fd)
        else:
            os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst_fd)
        _copy_attrs(src_fd, src_name, dst_fd, name, st)
        copyup.set_origin(self, src_fd, src_name, dst_fd, name)
        self.register_copy(node, hostfs.lstat_at(dst_fd, name))

    def _rehome(self, node: Node, alias: Alias) -> None:
        """After a whole-tree copy: the nodes below live in the upper only, under *alias*."""
        node.close_fds()
        node.layers = ONLY_UPPER
        node.version += 1
        alias.in_upper = True
        if node.is_dir:
            node.index = None
            for name, child in node.children.items():
                self._rehome(child, _alias_at(child, node, name))

    # == path API ===========================================================================
    def resolve(self, path: str) -> Node:
        """The node at *path*; no symlink is followed (ELOOP for one mid-path)."""
        with self.lock:
            node = self.root
            for part in _components(path):
                if node.kind == LNK:
                    raise oserror(errno.ELOOP, path)
                if not node.is_dir:
                    raise oserror(errno.ENOTDIR, path)
                node = self.lookup_locked(node, part)
            return node

    def _parent_of(self, path: str) -> tuple[Node, str]:
        parts = _components(path)
        if not parts:
            raise oserror(errno.EBUSY, path)
        parent = self.resolve("/" + "/".join(parts[:-1]))
        if parent.kind == LNK:
            raise oserror(errno.ELOOP, path)
        if not parent.is_dir:
            raise oserror(errno.ENOTDIR, path)
        return parent, parts[-1]

    def _call(self, path: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = path
            raise

    def lstat(self, path: str) -> Stat:
        return self._call(path, lambda: self.getattr(self.resolve(path)))  # type: ignore[no-any-return]

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except OSError:
            return False
        return True

    def listdir(self, path: str) -> list[str]:
        return [e.name for e in self.scandir(path)]

    def scandir(self, path: str) -> list[DirEntry]:
        return self._call(path, lambda: self.readdir(self.resolve(path)))  # type: ignore[no-any-return]

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> FileHandle:
        def run() -> FileHandle:
            if flags & os.O_CREAT:
                parent, name = self._parent_of(path)
                return self.create(parent, name, flags, mode)[1]
            return self.open_node(self.resolve(path), flags)

        return self._call(path, run)  # type: ignore[no-any-return]

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as fh:
            chunks = []
            while chunk := fh.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        with self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode) as fh:
            fh.write(data)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._call(path, lambda: self.mkdir_at(*self._parent_of(path), mode))

    def rmdir(self, path: str) -> None:
        self._call(path, lambda: self.rmdir_at(*self._parent_of(path)))

    def unlink(self, path: str) -> None:
        self._call(path, lambda: self.unlink_at(*self._parent_of(path)))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        def run() -> None:
            old_parent, old_name = self._parent_of(old)
            new_parent, new_name = self._parent_of(new)
            self.rename_at(old_parent, old_name, new_parent, new_name, flags)

        self._call(old, run)

    def symlink(self, target: str, path: str) -> None:
        self._call(path, lambda: self.symlink_at(*self._parent_of(path), target))

    def readlink(self, path: str) -> str:
        return self._call(path, lambda: self.readlink_node(self.resolve(path)))  # type: ignore[no-any-return]

    def link(self, existing: str, new: str) -> None:
        def run() -> None:
            node = self.resolve(existing)
            parent, name = self._parent_of(new)
            self.link_at(node, parent, name)

        self._call(new, run)

    def mknod(self, path: str, mode: int, rdev: int = 0) -> None:
        self._call(path, lambda: self.mknod_at(*self._parent_of(path), mode, rdev))

    def chmod(self, path: str, mode: int) -> None:
        self._call(path, lambda: self.setattr(self.resolve(path), mode=mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._call(
            path,
            lambda: self.setattr(
                self.resolve(path), uid=None if uid == -1 else uid, gid=None if gid == -1 else gid
            ),
        )

    def utimes(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        self._call(
            path, lambda: self.setattr(self.resolve(path), atime_ns=atime_ns, mtime_ns=mtime_ns)
        )

    def truncate(self, path: str, size: int) -> None:
        self._call(path, lambda: self.setattr(self.resolve(path), size=size))

    def getxattr(self, path: str, name: str) -> bytes:
        return self._call(path, lambda: self.getxattr_node(self.resolve(path), name))  # type: ignore[no-any-return]

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self._call(path, lambda: self.setxattr_node(self.resolve(path), name, value, flags))

    def listxattr(self, path: str) -> list[str]:
        return self._call(path, lambda: self.listxattr_node(self.resolve(path)))  # type: ignore[no-any-return]

    def removexattr(self, path: str, name: str) -> None:
        self._call(path, lambda: self.removexattr_node(self.resolve(path), name))


# -- helpers --------------------------------------------------------------------------------
def _components(path: str) -> list[str]:
    if len(os.fsencode(path)) >= _PATH_MAX:
        raise oserror(errno.ENAMETOOLONG, path)
    return [p for p in path.split("/") if p and p != "."]


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise oserror(errno.EINVAL, name)
    if len(os.fsencode(name)) > _NAME_MAX:
        raise oserror(errno.ENAMETOOLONG, name)
    if name.startswith(WHITEOUT_PREFIX):
        raise oserror(errno.EINVAL, name)


def _check_xattr_name(name: str) -> None:
    if is_private_xattr(name):
        raise oserror(errno.EOPNOTSUPP, name)


def _alias_at(node: Node, parent: Node, name: str) -> Alias:
    for alias in node.aliases:
        if alias.parent is parent and alias.name == name:
            return alias
    raise oserror(errno.ENOENT, name)


def _make_file(dirfd: int, name: str) -> None:
    os.close(
        os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dirfd,
        )
    )


def _make_dir(dirfd: int, name: str) -> None:
    os.mkdir(name, 0o700, dir_fd=dirfd)


def _drop_oci_whiteout(dirfd: int, name: str) -> None:
    """Remove a ``.wh.`` file for *name* that an upper in that style may hold."""
    marker = oci_whiteout_name(name)
    if marker is not None:
        _unlink_quiet(dirfd, marker)


def _unlink_quiet(dirfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dirfd)


def _copy_attrs(src_fd: int, src: str, dst_fd: int, dst: str, st: os.stat_result) -> None:
    hostfs.copy_xattrs(src_fd, src, dst_fd, dst)
    hostfs.chown_at(dst_fd, dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        hostfs.chmod_at(dst_fd, dst, st.st_mode)
    hostfs.utime_at(dst_fd, dst, st.st_atime_ns, st.st_mtime_ns)
