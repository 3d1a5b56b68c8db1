"""Frozen value types shared by the core, the FUSE mount and the store."""

from __future__ import annotations

import enum
import os
import stat as _stat
from dataclasses import dataclass
from typing import NamedTuple, NewType

InodeNo = NewType("InodeNo", int)
Digest = NewType("Digest", str)  # "sha256:<64 hex>"


class FileKind(enum.IntEnum):
    """The type of a filesystem object, as the ``S_IFMT`` bits of its mode."""

    REGULAR = _stat.S_IFREG
    DIRECTORY = _stat.S_IFDIR
    SYMLINK = _stat.S_IFLNK
    FIFO = _stat.S_IFIFO
    CHAR = _stat.S_IFCHR
    BLOCK = _stat.S_IFBLK
    SOCKET = _stat.S_IFSOCK

    @classmethod
    def of_mode(cls, mode: int) -> FileKind:
        return cls(_stat.S_IFMT(mode))


class Stat(NamedTuple):
    """Attributes of an object in the merged view (``st_ino`` is the stack's own number).

    A named tuple rather than a frozen dataclass: one is built for every entry of every
    directory listing the FUSE mount answers, and a tuple is built ten times faster.
    """

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    blksize: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @property
    def kind(self) -> FileKind:
        return FileKind.of_mode(self.mode)

    @classmethod
    def from_host(cls, st: os.stat_result, ino: int, nlink: int | None = None) -> Stat:
        return cls(
            ino,
            st.st_mode,
            st.st_nlink if nlink is None else nlink,
            st.st_uid,
            st.st_gid,
            st.st_rdev,
            st.st_size,
            st.st_blocks,
            st.st_blksize,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One name of a merged directory listing."""

    name: str
    ino: int
    kind: FileKind


@dataclass(frozen=True, slots=True)
class StatFs:
    """Filesystem statistics, taken from the upper layer (or the top lower when read-only)."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int
