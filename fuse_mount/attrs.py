"""Core :class:`~layerfs.types.Stat` to pyfuse3 attributes, and how long the kernel may cache them.

Objects that live only in lower layers cannot change while the stack is mounted (every change
copies them up first), so the kernel may keep their dentries and attributes for a long time.
Objects in the upper layer change only through this mount as well, and each change's reply
updates the kernel's cache, but the upper directory is an ordinary host directory someone may
still edit; their shorter timeout bounds how long such an edit stays invisible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyfuse3

if TYPE_CHECKING:
    from layerfs.types import Stat, StatFs

UPPER_TIMEOUT = 1.0  # seconds
LOWER_TIMEOUT = 86400.0  # seconds: lower-only objects never change while mounted


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Entry and attribute cache lifetimes (seconds) for upper and lower-only objects."""

    upper: float = UPPER_TIMEOUT
    lower: float = LOWER_TIMEOUT

    def for_object(self, lower_only: bool) -> float:
        return self.lower if lower_only else self.upper


def entry_attributes(st: Stat, timeout: float) -> pyfuse3.EntryAttributes:
    """Fill a fresh ``EntryAttributes``; the kernel inode number is the stack's ``st_ino``.

    A fresh object per reply, because pyfuse3 reads it after the handler returns and handlers
    run concurrently.
    """
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = st.ino
    attr.generation = 0
    attr.entry_timeout = timeout
    attr.attr_timeout = timeout
    attr.st_mode = st.mode
    attr.st_nlink = st.nlink
    attr.st_uid = st.uid
    attr.st_gid = st.gid
    attr.st_rdev = st.rdev
    attr.st_size = st.size
    attr.st_blksize = st.blksize
    attr.st_blocks = st.blocks
    attr.st_atime_ns = st.atime_ns
    attr.st_mtime_ns = st.mtime_ns
    attr.st_ctime_ns = st.ctime_ns
    return attr


def negative_entry(timeout: float) -> pyfuse3.EntryAttributes:
    """A lookup reply that says "no such name" and lets the kernel cache that answer.

    Safe because every name is created through this mount, and creating a name replaces the
    kernel's negative dentry.
    """
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = timeout
    return attr


def statvfs_data(st: StatFs) -> pyfuse3.StatvfsData:
    data = pyfuse3.StatvfsData()
    data.f_bsize = st.bsize
    data.f_frsize = st.frsize
    data.f_blocks = st.blocks
    data.f_bfree = st.bfree
    data.f_bavail = st.bavail
    data.f_files = st.files
    data.f_ffree = st.ffree
    data.f_favail = st.favail
    data.f_namemax = st.namemax
    return data


def encode_name(name: str) -> bytes:
    """A stack name back to the bytes the kernel sent (surrogateescape round-trips)."""
    return os.fsencode(name)
