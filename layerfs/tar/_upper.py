"""Reading an upper (or lower) directory in either on-disk whiteout format.

One directory is read at a time into a :class:`DirScan`: its real children, the names it
whites out (0/0 character devices and ``.wh.NAME`` files alike) and whether it is opaque
(``trusted.overlay.opaque``/``user.overlay.opaque`` or a ``.wh..wh..opq`` file). Whiteout
files and markers are never reported as children: they are encodings, not data.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from layerfs import hostfs
from layerfs.whiteout import (
    OPAQUE_MARKER,
    TRUSTED_PREFIX,
    USER_PREFIX,
    WHITEOUT_PREFIX,
    is_opaque_value,
    is_private_xattr,
    is_whiteout_stat,
    whited_out_name,
)

OPAQUE_XATTRS = (TRUSTED_PREFIX + "opaque", USER_PREFIX + "opaque")
METACOPY_XATTRS = (TRUSTED_PREFIX + "metacopy", USER_PREFIX + "metacopy")
O_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class DirScan:
    """One directory's children (name -> lstat, sorted by name bytes), whiteouts, opacity."""

    children: list[tuple[str, os.stat_result]] = field(default_factory=list)
    whiteouts: set[str] = field(default_factory=set)
    opaque: bool = False


def sort_key(name: str) -> bytes:
    return os.fsencode(name)


def proc_path(fd: int) -> str:
    """A path naming the object open as *fd* (works for ``O_PATH`` descriptors too)."""
    return f"/proc/self/fd/{fd}"


def xattr_names(target: int | str) -> list[str]:
    try:
        return os.listxattr(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise


def public_xattrs(target: int | str, names: list[str]) -> dict[str, bytes]:
    """The values of *names* on *target* that are not overlayfs' own, sorted by name."""
    found: dict[str, bytes] = {}
    for name in sorted(names):
        if is_private_xattr(name):
            continue
        try:
            found[name] = os.getxattr(target, name)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return found


def has_opaque_xattr(target: int | str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if is_opaque_value(os.getxattr(target, name)):
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    return False


def scan_dir(dir_fd: int) -> DirScan:
    """Read directory *dir_fd* (an ``O_PATH`` or readable descriptor)."""
    scan = DirScan()
    for name in sorted(os.listdir(proc_path(dir_fd)), key=sort_key):
        if name == OPAQUE_MARKER:
            scan.opaque = True
            continue
        if name.startswith(WHITEOUT_PREFIX):
            target = whited_out_name(name)
            if target is not None and not target.startswith(WHITEOUT_PREFIX):
                scan.whiteouts.add(target)
            continue
        st = hostfs.lstat_at(dir_fd, name)
        if is_whiteout_stat(st):
            scan.whiteouts.add(name)
            continue
        scan.children.append((name, st))
    if not scan.opaque:
        scan.opaque = has_opaque_xattr(proc_path(dir_fd))
    return scan


def open_dir(dir_fd: int, name: str) -> int:
    """An ``O_PATH`` descriptor of child directory *name*, never through a symlink."""
    return os.open(name, hostfs.O_PATH_DIR, dir_fd=dir_fd)


def is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)
