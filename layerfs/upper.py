"""Every change layerfs makes on the upper's filesystem, one small wrapper per operation.

Like overlayfs's ``ovl_do_*`` helpers: copy-up, the namespace operations and attribute
changes call these and nothing else to touch the upper directory or the work directory, and
each logs the call and its outcome at debug level (logger ``layerfs.upper``), so a session
run with ``--debug`` shows exactly what it changed on disk. Objects are named by a directory
descriptor and one name, never through a symlink (see :mod:`layerfs.hostfs`).

:class:`Upper` also knows the encoding the upper is written in (:class:`UpperFormat`): which
xattr namespace, and whether a whiteout is a 0/0 device or a ``.wh.`` file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from layerfs import hostfs
from layerfs.errors import oserror
from layerfs.whiteout import WhiteoutStyle, oci_whiteout_name

if TYPE_CHECKING:
    from layerfs.layer import LayerFile
    from layerfs.whiteout import UpperFormat

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
COPY_CHUNK = 1 << 20  # bytes per read when a source has no host descriptor


class _At:
    """``dirfd`` + name, turned into a readable path only if a debug line is written."""

    __slots__ = ("dirfd", "name")

    def __init__(self, dirfd: int, name: str) -> None:
        self.dirfd = dirfd
        self.name = name

    def __str__(self) -> str:
        try:
            base = os.readlink(f"/proc/self/fd/{self.dirfd}")
        except OSError:
            base = f"fd {self.dirfd}"
        return f"{base}/{self.name}"


def _logged(op: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Log ``op`` with its arguments and its result (or errno) at debug level."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if not log.isEnabledFor(logging.DEBUG):
                return fn(*args, **kwargs)
            shown = _describe(args[1:])
            try:
                result = fn(*args, **kwargs)
            except OSError as exc:
                log.debug("%s %s -> %s", op, shown, errno.errorcode.get(exc.errno or 0, exc))
                raise
            log.debug("%s %s -> ok", op, shown)
            return result

        return call

    return wrap


def _describe(args: tuple[object, ...]) -> str:
    """``(dirfd, name, dirfd, name, extra...)`` as ``path [path] extra...``."""
    parts: list[str] = []
    items = list(args)
    while len(items) >= 2 and isinstance(items[0], int) and isinstance(items[1], str):
        parts.append(str(_At(items[0], items[1])))
        items = items[2:]
    parts.extend(oct(x) if isinstance(x, int) and x > 7 else repr(x) for x in items)
    return " ".join(parts)


class Upper:
    """The writer of one stack's upper and work directories (see the module docstring)."""

    def __init__(self, fmt: UpperFormat, *, volatile: bool = False) -> None:
        self.format = fmt
        self.volatile = volatile

    # -- names ---------------------------------------------------------------------------
    @_logged("mkdir")
    def mkdir(self, dirfd: int, name: str, mode: int = 0o700) -> None:
        os.mkdir(name, mode, dir_fd=dirfd)

    @_logged("create")
    def create(self, dirfd: int, name: str) -> int:
        """A new, empty regular file (mode 0600 until its metadata is set), opened for writing."""
        return os.open(name, _NEW_FILE, 0o600, dir_fd=dirfd)

    def make_file(self, dirfd: int, name: str) -> None:
        os.close(self.create(dirfd, name))

    @_logged("mknod")
    def mknod(self, dirfd: int, name: str, mode: int, rdev: int = 0) -> None:
        os.mknod(name, mode, rdev, dir_fd=dirfd)

    @_logged("symlink")
    def symlink(self, dirfd: int, name: str, target: str) -> None:
        os.symlink(target, name, dir_fd=dirfd)

    @_logged("link")
    def link(self, src_fd: int, src: str, dst_fd: int, dst: str) -> None:
        os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)

    @_logged("rename")
    def rename(self, src_fd: int, src: str, dst_fd: int, dst: str, flags: int = 0) -> None:
        """``renameat2`` with RENAME_NOREPLACE, RENAME_EXCHANGE or RENAME_WHITEOUT."""
        hostfs.rename_at(src_fd, src, dst_fd, dst, flags)

    @_logged("unlink")
    def unlink(self, dirfd: int, name: str) -> None:
        os.unlink(name, dir_fd=dirfd)

    def unlink_quiet(self, dirfd: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.unlink(dirfd, name)

    @_logged("remove-tree")
    def remove_tree(self, dirfd: int, name: str) -> None:
        hostfs.remove_tree(dirfd, name)

    # -- whiteouts -----------------------------------------------------------------------
    @property
    def chardev_whiteouts(self) -> bool:
        return self.format.whiteouts is WhiteoutStyle.CHARDEV

    @_logged("whiteout")
    def whiteout(self, dirfd: int, name: str) -> None:
        """A whiteout for *name* in the upper's style (ENAMETOOLONG where none can exist)."""
        if self.chardev_whiteouts:
            hostfs.make_whiteout(dirfd, name)
        else:
            os.close(os.open(self.oci_whiteout(name), _NEW_FILE, 0o600, dir_fd=dirfd))

    @staticmethod
    def oci_whiteout(name: str) -> str:
        """The ``.wh.`` file deleting *name*; ENAMETOOLONG where none can exist.

        Asked before anything changes, so an operation that cannot leave its whiteout fails
        whole (only the ``.wh.`` style has this limit; a 0/0 device takes the name itself).
        """
        marker = oci_whiteout_name(name)
        if marker is None:
            raise oserror(errno.ENAMETOOLONG, name)
        return marker

    def check_whiteout_fits(self, name: str) -> None:
        if not self.chardev_whiteouts:
            self.oci_whiteout(name)

    def drop_oci_whiteout(self, dirfd: int, name: str) -> None:
        """Remove a ``.wh.`` file for *name* that an upper in that style may hold."""
        marker = oci_whiteout_name(name)
        if marker is not None:
            self.unlink_quiet(dirfd, marker)

    # -- attributes ----------------------------------------------------------------------
    @_logged("setxattr")
    def setxattr(self, dirfd: int, name: str, attr: str, value: bytes, flags: int = 0) -> None:
        hostfs.setxattr_at(dirfd, name, attr, value, flags)

    @_logged("removexattr")
    def removexattr(self, dirfd: int, name: str, attr: str) -> None:
        hostfs.removexattr_at(dirfd, name, attr)

    @_logged("chown")
    def chown(self, dirfd: int, name: str, uid: int, gid: int) -> None:
        hostfs.chown_at(dirfd, name, uid, gid)

    @_logged("chmod")
    def chmod(self, dirfd: int, name: str, mode: int) -> None:
        hostfs.chmod_at(dirfd, name, mode)

    @_logged("utimes")
    def utimes(self, dirfd: int, name: str, atime_ns: int, mtime_ns: int) -> None:
        hostfs.utime_at(dirfd, name, atime_ns, mtime_ns)

    def set_metadata(
        self, dirfd: int, name: str, st: os.stat_result, xattrs: dict[str, bytes]
    ) -> None:
        """Owner, xattrs, mode and times of a copied object, in the order that keeps each
        from undoing another: a chown drops set-id bits and ``security.capability``, so it
        comes first; any change moves the times, so they come last."""
        self.chown(dirfd, name, st.st_uid, st.st_gid)
        for attr, value in xattrs.items():
            self.setxattr(dirfd, name, attr, value)
        if not stat.S_ISLNK(st.st_mode):
            self.chmod(dirfd, name, st.st_mode)
        self.utimes(dirfd, name, st.st_atime_ns, st.st_mtime_ns)

    @_logged("utimes")
    def fd_utimes(self, fd: int, atime_ns: int, mtime_ns: int) -> None:
        """Times of the object open as *fd* (``O_PATH`` too) itself."""
        os.utime(f"/proc/self/fd/{fd}", ns=(atime_ns, mtime_ns))

    @_logged("setxattr")
    def fd_setxattr(self, fd: int, attr: str, value: bytes) -> None:
        hostfs.fd_setxattr(fd, attr, value)

    # -- data ----------------------------------------------------------------------------
    @_logged("truncate")
    def truncate(self, dirfd: int, name: str, size: int) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    @_logged("copy-data")
    def copy_data(self, src: LayerFile, dst_fd: int, size: int) -> None:
        """Copy *size* bytes from *src* into *dst_fd* (in the kernel where *src* is a host
        file), then fsync unless the stack is volatile."""
        src_fd = src.fileno()
        if src_fd is not None:
            hostfs.copy_data(src_fd, dst_fd, size)
        else:
            offset = 0
            while offset < size:
                chunk = src.pread(min(COPY_CHUNK, size - offset), offset)
                if not chunk:
                    break
                os.pwrite(dst_fd, chunk, offset)
                offset += len(chunk)
        self.sync(dst_fd)

    def sync(self, fd: int) -> None:
        if not self.volatile:
            os.fsync(fd)

    @_logged("punch")
    def punch(self, fd: int, st: os.stat_result) -> None:
        """Give a file's blocks back, keeping its size and times (a sparse file again)."""
        os.ftruncate(fd, 0)
        os.ftruncate(fd, st.st_size)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
