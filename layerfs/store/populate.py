"""The first content of a volume: a copy of what the image holds at the volume's path.

The copy is read from the image's merged view through the core (a read-only
:class:`~layerfs.stack.Stack` over the image's layers), so whiteouts and opaque directories
hide what they hide, and a symlink in the image is copied as a symlink, never followed. Every
object keeps its type, mode (setuid and sticky bits too), owner, xattrs (overlayfs' private
ones excepted, as the merged view hides them), data, device numbers and atime/mtime; names
that are hard links of one object in the image are hard links in the copy. Host objects are
written through directory descriptors and single names, never through a path that could
pass a symlink the copy made.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from layerfs import hostfs, privilege
from layerfs.errors import oserror
from layerfs.node import Node
from layerfs.progress import Task
from layerfs.stack import Stack
from layerfs.types import Stat

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)

_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class _Copy:
    """State of one copy: the destination root and the first copy of each linked inode."""

    view: Stack
    root_fd: int
    progress: Task | None
    same_owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    links: dict[int, str] = field(default_factory=dict)  # stack inode -> path below the root


def copy_tree(view: Stack, path: str, dest: Path, progress: Task | None = None) -> None:
    """Copy the directory *path* of *view* (symlink-free) into the new directory *dest*.

    *dest* must not exist; its parent must. It gets the metadata of *path* itself. The copy is
    durable once this returns: one ``syncfs(2)`` of *dest*'s filesystem at the end, which
    costs a fraction of an ``fsync`` per file (thousands of journal commits). *progress*
    advances by the data bytes of each file copied. Raises ``OSError`` and cleans nothing
    up: the caller copies into a staging directory and throws it away on failure.
    """
    node = view.resolve(path)
    st = view.getattr(node)
    os.mkdir(dest, 0o700)
    root_fd = os.open(dest, _O_DIR)
    try:
        copy = _Copy(view, root_fd, progress)
        _copy_children(copy, node, root_fd, "")
        _set_metadata(copy, node, st, root_fd, ".")
        _syncfs(root_fd)
    finally:
        os.close(root_fd)


def _copy_children(copy: _Copy, parent: Node, dir_fd: int, rel: str) -> None:
    view = copy.view
    for name in view.listdir_node(parent):
        child = view.lookup(parent, name)
        try:
            _copy_one(copy, child, view.getattr(child), dir_fd, name, f"{rel}{name}")
        finally:
            view.forget(child)  # bounds memory and held descriptors on a large tree


def _copy_one(copy: _Copy, node: Node, st: Stat, dir_fd: int, name: str, rel: str) -> None:
    mode = st.mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        sub = os.open(name, _O_DIR, dir_fd=dir_fd)
        try:
            _copy_children(copy, node, sub, rel + "/")
            _set_metadata(copy, node, st, dir_fd, name)
        finally:
            os.close(sub)
        return
    if st.nlink > 1:
        first = copy.links.get(st.ino)
        if first is not None:
            os.link(first, name, src_dir_fd=copy.root_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            return
        copy.links[st.ino] = rel
    if stat.S_ISREG(mode):
        _copy_file(copy, node, st, dir_fd, name)
        return
    if stat.S_ISLNK(mode):
        os.symlink(copy.view.readlink_node(node), name, dir_fd=dir_fd)
    else:
        os.mknod(name, stat.S_IFMT(mode) | 0o600, st.rdev, dir_fd=dir_fd)
    _set_metadata(copy, node, st, dir_fd, name)


def _copy_file(copy: _Copy, node: Node, st: Stat, dir_fd: int, name: str) -> None:
    out = os.open(name, _O_NEW_FILE, 0o600, dir_fd=dir_fd)
    try:
        with copy.view.open_node(node, os.O_RDONLY) as src:
            hostfs.copy_data(src.fileno(), out, st.size)
        _set_metadata(copy, node, st, dir_fd, name)
        if copy.progress is not None:
            copy.progress.advance(st.size)
    finally:
        os.close(out)


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        raise oserror(ctypes.get_errno())


def _set_metadata(copy: _Copy, node: Node, st: Stat, dir_fd: int, name: str) -> None:
    """Owner first (chown clears setuid bits and file capabilities), then mode, xattrs, times.

    As when layers are unpacked: owners are kept only by root, and an xattr the filesystem or
    the user cannot hold (``trusted.*`` for a user) is logged and left out.
    """
    if copy.same_owner:
        with privilege.owner_must_be_mapped(node.path(), st.uid, st.gid):
            hostfs.chown_at(dir_fd, name, st.uid, st.gid)
    if not stat.S_ISLNK(st.mode):
        hostfs.chmod_at(dir_fd, name, st.mode)
    for attr in copy.view.listxattr_node(node):
        try:
            hostfs.setxattr_at(dir_fd, name, attr, copy.view.getxattr_node(node, attr))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            log.warning("volume copy of %s: cannot set xattr %s: %s", name, attr, exc.strerror)
    hostfs.utime_at(dir_fd, name, st.atime_ns, st.mtime_ns)
