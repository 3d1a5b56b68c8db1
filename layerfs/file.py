"""Open files of the merged view.

:func:`open_node` copies a file up before it is opened for writing (or truncated), and opens
the object that defines it otherwise: its upper object, its lower one, or for a metadata-only
copy the lower that holds its data. A :class:`FileHandle` owns what it opened: a host
descriptor, or a layer's own file where the layer has no host descriptor for it. Reads go
straight to it with ``pread``; a handle notices when its node was copied up (or its data
re-homed) since it was opened and reopens the current object, as kernel overlayfs does for
``read(2)``, so a reader opened before a copy-up sees the writer's data. What it opened stays
open after the name is unlinked, so an unlinked open file stays readable until closed.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from layerfs import copyup, hostfs
from layerfs.errors import oserror
from layerfs.inode import getattr_, to_stat
from layerfs.node import LNK

if TYPE_CHECKING:
    from layerfs.fs import Overlay
    from layerfs.layer import LayerFile
    from layerfs.node import Node
    from layerfs.types import Stat

ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
_NOT_FOR_HOST = os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY


def open_node(
    fs: Overlay, node: Node, flags: int, before_write: Callable[[Node], None] | None = None
) -> FileHandle:
    """Open *node* (the lock held); write access or ``O_TRUNC`` copies it up first.

    *before_write* runs before each write that carries data (a caller view drops set-id
    bits there, as the kernel's ``file_remove_privs``).
    """
    if node.kind == LNK:
        raise oserror(errno.ELOOP)
    wants_write = (flags & ACCESS) != os.O_RDONLY or bool(flags & os.O_TRUNC)
    if node.is_dir and wants_write:
        raise oserror(errno.EISDIR)
    if not node.aliases:
        raise oserror(errno.ENOENT)
    source = _open_object(fs, node, flags, wants_write)
    node.handles += 1
    return FileHandle(fs, node, source, flags, before_write)


def _open_object(fs: Overlay, node: Node, flags: int, wants_write: bool) -> LayerFile | int:
    """What a handle reads and writes: a host descriptor, or a lower layer's own file."""
    if wants_write:
        fs.check_writable()
        copyup.prepare_write(fs, node, 0 if flags & os.O_TRUNC else None)
        dirfd, name = fs.upper_location(node)
        return _open_host(dirfd, name, flags & ~_NOT_FOR_HOST)
    layer, parent, name = fs.data_location(node)
    if node.in_upper and node.data is None:
        return _open_host(parent, name, flags & ~_NOT_FOR_HOST)
    return layer.open_file(parent, name)


def _open_host(dirfd: int, name: str, flags: int) -> int:
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)


def _reopen(fs: Overlay, node: Node, flags: int) -> LayerFile | int | None:
    """A fresh object for a handle whose node moved (copy-up, data completed), or None."""
    with fs.lock:
        if not node.aliases:
            return None
        writable = (flags & ACCESS) != os.O_RDONLY
        if writable:
            dirfd, name = fs.upper_location(node)
            return _open_host(dirfd, name, flags & ~(_NOT_FOR_HOST | os.O_TRUNC))
        return _open_object(fs, node, flags & ~os.O_TRUNC, False)


class FileHandle:
    """An open regular file (see the module docstring); a context manager."""

    def __init__(
        self,
        fs: Overlay,
        node: Node,
        source: LayerFile | int,
        flags: int,
        before_write: Callable[[Node], None] | None = None,
    ) -> None:
        self._fs = fs
        self.node = node
        self._fd, self._file = _split(source)
        self.flags = flags
        self._before_write = before_write
        self._version = node.version
        self._pos = 0
        self._lock = threading.Lock()
        self.closed = False

    # -- what is open --------------------------------------------------------------------
    def fileno(self) -> int:
        """The current host descriptor (it changes when the handle follows a copy-up);
        EBADF for a file a layer serves without one."""
        self._refresh()
        if self._fd < 0:
            raise oserror(errno.EBADF)
        return self._fd

    def has_fileno(self) -> bool:
        """Whether reads and writes go to a host descriptor (then it can be passed through)."""
        self._refresh()
        return self._fd >= 0

    @property
    def writable(self) -> bool:
        return (self.flags & ACCESS) in (os.O_WRONLY, os.O_RDWR)

    @property
    def readable(self) -> bool:
        return (self.flags & ACCESS) in (os.O_RDONLY, os.O_RDWR)

    def _refresh(self) -> None:
        if self.closed:
            raise oserror(errno.EBADF)
        if self._version == self.node.version:
            return
        with self._lock:
            if self._version == self.node.version:
                return
            fresh = _reopen(self._fs, self.node, self.flags)
            self._version = self.node.version
            if fresh is None:  # the node is gone: keep reading what we have
                return
            self._close_source()
            self._fd, self._file = _split(fresh)

    def _close_source(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        elif self._file is not None:
            self._file.close()

    # -- I/O --------------------------------------------------------------------------------
    def read(self, size: int, offset: int | None = None) -> bytes:
        if not self.readable:
            raise oserror(errno.EBADF)
        self._refresh()
        at = self._pos if offset is None else offset
        if self._fd >= 0:
            data = os.pread(self._fd, size, at)
        else:
            assert self._file is not None
            data = self._file.pread(size, at)
        if offset is None:
            self._pos += len(data)
        return data

    def write(self, data: bytes, offset: int | None = None) -> int:
        if not self.writable:
            raise oserror(errno.EBADF)
        if data and self._before_write is not None:
            self._before_write(self.node)
        fd = self.fileno()
        if self.flags & os.O_APPEND and offset is None:
            with self._lock:
                return os.pwrite(fd, data, os.fstat(fd).st_size)
        if offset is not None:
            return os.pwrite(fd, data, offset)
        n = os.pwrite(fd, data, self._pos)
        self._pos += n
        return n

    def seek(self, pos: int) -> None:
        self._pos = pos

    def truncate(self, size: int) -> None:
        if not self.writable:
            raise oserror(errno.EBADF)
        os.ftruncate(self.fileno(), size)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """``fallocate(2)`` of the file this handle writes: reserve (*mode* 0 or
        ``FALLOC_FL_KEEP_SIZE``), punch or zero a range. EBADF unless open for writing."""
        if not self.writable:
            raise oserror(errno.EBADF)
        if self._before_write is not None:
            self._before_write(self.node)
        hostfs.fallocate(self.fileno(), mode, offset, length)

    def fsync(self, datasync: bool = False) -> None:
        if not self.has_fileno():
            return  # a lower layer's own file: nothing of ours to write back
        fd = self.fileno()
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def stat(self) -> Stat:
        """Attributes of the open object; still works after its last name was unlinked."""
        self._refresh()
        with self._fs.lock:
            if self.node.aliases:
                return getattr_(self._fs, self.node)
            if self._fd < 0:
                raise oserror(errno.ENOENT)
            return to_stat(self._fs, self.node, os.fstat(self._fd))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close_source()
            with self._fs.lock:
                self.node.handles -= 1

    def __enter__(self) -> FileHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split(source: LayerFile | int) -> tuple[int, LayerFile | None]:
    """A host descriptor is kept as one (reads skip a call); a layer's file as the object,
    unless it has a host descriptor of its own."""
    if isinstance(source, int):
        return source, None
    fd = source.fileno()
    if fd is not None:
        return fd, None  # a HostFile: its descriptor is the handle's now
    return -1, source
