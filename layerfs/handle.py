"""Open files of the merged view.

A :class:`FileHandle` owns one host descriptor. Reads go straight to it with ``pread``; a
handle notices when its node was copied up (or its data re-homed) since it was opened and
reopens the current host object, as kernel overlayfs does, so a reader opened before a copy-up
sees the writer's data. The descriptor stays open after the name is unlinked, so an unlinked
open file stays readable until closed.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import TYPE_CHECKING

from layerfs.errors import oserror
from layerfs.types import Stat

if TYPE_CHECKING:
    from layerfs.node import Node
    from layerfs.stack import Stack

_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR


class FileHandle:
    """An open regular file (see the module docstring); a context manager."""

    def __init__(self, stack: Stack, node: Node, fd: int, flags: int) -> None:
        self._stack = stack
        self.node = node
        self._fd = fd
        self.flags = flags
        self._version = node.version
        self._pos = 0
        self._lock = threading.Lock()
        self.closed = False

    # -- descriptor management -------------------------------------------------------------
    def fileno(self) -> int:
        """The current host descriptor (it changes when the handle follows a copy-up)."""
        self._refresh()
        return self._fd

    @property
    def writable(self) -> bool:
        return (self.flags & _ACCESS) in (os.O_WRONLY, os.O_RDWR)

    @property
    def readable(self) -> bool:
        return (self.flags & _ACCESS) in (os.O_RDONLY, os.O_RDWR)

    def _refresh(self) -> None:
        if self.closed:
            raise oserror(errno.EBADF)
        if self._version == self.node.version:
            return
        with self._lock:
            if self._version == self.node.version:
                return
            new_fd = self._stack._reopen(self.node, self.flags)
            if new_fd is None:  # the node is gone: keep reading what we have
                self._version = self.node.version
                return
            old, self._fd = self._fd, new_fd
            self._version = self.node.version
            os.close(old)

    # -- I/O --------------------------------------------------------------------------------
    def read(self, size: int, offset: int | None = None) -> bytes:
        if not self.readable:
            raise oserror(errno.EBADF)
        fd = self.fileno()
        if offset is not None:
            return os.pread(fd, size, offset)
        data = os.pread(fd, size, self._pos)
        self._pos += len(data)
        return data

    def write(self, data: bytes, offset: int | None = None) -> int:
        if not self.writable:
            raise oserror(errno.EBADF)
        fd = self.fileno()
        if self.flags & os.O_APPEND and offset is None:
            with self._lock:
                n = os.pwrite(fd, data, os.fstat(fd).st_size)
            return n
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

    def fsync(self, datasync: bool = False) -> None:
        fd = self.fileno()
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def stat(self) -> Stat:
        """Attributes of the open object; still works after its last name was unlinked."""
        return self._stack._fstat(self.node, self.fileno())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)
            self._stack._release(self.node)

    def __enter__(self) -> FileHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
