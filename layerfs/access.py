"""Who is asking: caller credentials and the kernel VFS's permission rules for them.

A stack is a filesystem; like overlayfs under the kernel's VFS, it does not itself decide who
may do what. The FUSE mount leaves that to the kernel (``default_permissions``). A library
caller acting for a user that is not root gets the same rules from :class:`Credentials` and
the functions here, as :mod:`layerfs.pathapi` applies them: ``generic_permission`` on the mode
bits (POSIX ACLs are not read), the sticky-directory rule, ``protected_hardlinks``, the owner
rules of chmod/chown/utimes, the ``user.*`` xattr rules, and which set-id bits a write, a
truncate, a chown or a chmod drops. Each raises the errno the kernel gives (``EACCES`` or
``EPERM``) or returns the adjusted value.

A caller with uid 0 holds every capability, as root in the initial user namespace does.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from layerfs.errors import oserror
from layerfs.types import Stat

MAY_EXEC = 1
MAY_WRITE = 2
MAY_READ = 4

_PROTECTED_HARDLINKS = Path("/proc/sys/fs/protected_hardlinks")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A caller: filesystem uid and gid, supplementary groups; uid 0 has all capabilities."""

    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of_process(cls) -> Credentials:
        """This process's effective identity."""
        return cls(os.geteuid(), os.getegid(), frozenset(os.getgroups()))

    @property
    def privileged(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def owns(self, st: Stat) -> bool:
        """``inode_owner_or_capable``: the owner, or a caller with CAP_FOWNER."""
        return self.privileged or st.uid == self.uid

    def in_group_or_capable(self, gid: int) -> bool:
        return self.privileged or self.in_group(gid)


def permission(st: Stat, creds: Credentials, mask: int) -> None:
    """``generic_permission``: EACCES unless the mode bits (or a capability) allow *mask*."""
    mode = st.mode
    if creds.uid == st.uid:
        bits = (mode >> 6) & 7
    elif creds.in_group(st.gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    if mask & ~bits == 0:
        return
    # CAP_DAC_OVERRIDE: anything but executing a file that nobody may execute
    overrides = stat.S_ISDIR(mode) or not mask & MAY_EXEC or bool(mode & 0o111)
    if creds.privileged and overrides:
        return
    raise oserror(errno.EACCES)


def may_create(parent: Stat, creds: Credentials) -> None:
    """Adding a name to a directory needs write and search permission on it."""
    permission(parent, creds, MAY_WRITE | MAY_EXEC)


def may_delete(parent: Stat, victim: Stat, creds: Credentials) -> None:
    """Removing a name: write and search on the directory, then the sticky-bit rule."""
    permission(parent, creds, MAY_WRITE | MAY_EXEC)
    if parent.mode & stat.S_ISVTX and not (
        creds.privileged or victim.uid == creds.uid or parent.uid == creds.uid
    ):
        raise oserror(errno.EPERM)


def may_link(source: Stat, creds: Credentials) -> None:
    """``protected_hardlinks``: only the owner may link a file that is not a "safe" source.

    Safe: a regular file without set-uid, without executable set-gid, that the caller may
    read and write. Read from the running kernel's setting (Debian turns it on).
    """
    if not _protected_hardlinks() or creds.owns(source):
        return
    mode = source.mode
    safe = stat.S_ISREG(mode) and not mode & stat.S_ISUID
    safe = safe and (mode & (stat.S_ISGID | stat.S_IXGRP)) != (stat.S_ISGID | stat.S_IXGRP)
    if safe:
        try:
            permission(source, creds, MAY_READ | MAY_WRITE)
            return
        except PermissionError:
            pass
    raise oserror(errno.EPERM)


def chmod_mode(st: Stat, creds: Credentials, mode: int) -> int:
    """The mode a chmod sets: EPERM for a caller that does not own the object, and set-gid
    dropped when the caller is not in the object's group."""
    if not creds.owns(st):
        raise oserror(errno.EPERM)
    mode = stat.S_IMODE(mode)
    if not creds.in_group_or_capable(st.gid):
        mode &= ~stat.S_ISGID
    return mode


def check_chown(st: Stat, creds: Credentials, uid: int | None, gid: int | None) -> None:
    """EPERM unless the caller may give the object this owner and group.

    Without CAP_CHOWN only the owner may "change" the owner to itself, and set the group to
    its own group or one it belongs to.
    """
    if creds.privileged:
        return
    if uid is not None and not (st.uid == creds.uid and uid == st.uid):
        raise oserror(errno.EPERM)
    if gid is not None and not (st.uid == creds.uid and (gid == st.gid or creds.in_group(gid))):
        raise oserror(errno.EPERM)


def mode_after_chown(st: Stat, creds: Credentials, gid: int | None) -> int | None:
    """The mode a chown leaves on a non-directory, or None when it keeps it.

    The kernel drops set-uid on every chown of a non-directory, and set-gid where the group
    may execute or where the caller is outside the old or the new group (and lacks
    CAP_FSETID); a directory keeps both.
    """
    if stat.S_ISDIR(st.mode):
        return None
    mode = stat.S_IMODE(st.mode) & ~stat.S_ISUID
    if _drops_sgid(st, creds) or (gid is not None and not creds.in_group_or_capable(gid)):
        mode &= ~stat.S_ISGID
    return None if mode == stat.S_IMODE(st.mode) else mode


def mode_after_write(st: Stat, creds: Credentials) -> int | None:
    """``file_remove_privs``: the mode a write or truncate by *creds* leaves, or None.

    Without CAP_FSETID, set-uid goes, and set-gid where the group may execute or where the
    caller is outside the file's group.
    """
    if creds.privileged or not stat.S_ISREG(st.mode):
        return None
    mode = stat.S_IMODE(st.mode) & ~stat.S_ISUID
    if _drops_sgid(st, creds):
        mode &= ~stat.S_ISGID
    return None if mode == stat.S_IMODE(st.mode) else mode


def _drops_sgid(st: Stat, creds: Credentials) -> bool:
    """``setattr_should_drop_sgid``."""
    if not st.mode & stat.S_ISGID:
        return False
    return bool(st.mode & stat.S_IXGRP) or not creds.in_group_or_capable(st.gid)


def check_times(st: Stat, creds: Credentials) -> None:
    """Setting explicit times needs ownership (or CAP_FOWNER)."""
    if not creds.owns(st):
        raise oserror(errno.EPERM)


def xattr_permission(st: Stat, creds: Credentials, name: str, write: bool) -> None:
    """The VFS's ``xattr_permission``: namespaces first, then the mode bits.

    ``trusted.*`` needs CAP_SYS_ADMIN; ``user.*`` exists only on regular files and
    directories, and on a sticky directory only its owner may write it.
    """
    if name.startswith(("security.", "system.")):
        return
    if name.startswith("trusted."):
        if not creds.privileged:
            raise oserror(errno.EPERM if write else errno.ENODATA)
        return
    if name.startswith("user."):
        if not (stat.S_ISREG(st.mode) or stat.S_ISDIR(st.mode)):
            raise oserror(errno.EPERM if write else errno.ENODATA)
        if write and stat.S_ISDIR(st.mode) and st.mode & stat.S_ISVTX and not creds.owns(st):
            raise oserror(errno.EPERM)
    permission(st, creds, MAY_WRITE if write else MAY_READ)


def strip_sgid(parent: Stat, creds: Credentials, mode: int) -> int:
    """``mode_strip_sgid``: a new non-directory asked for with executable set-gid, in a
    set-gid directory, keeps set-gid only for a caller in the directory's group."""
    sgid_x = stat.S_ISGID | stat.S_IXGRP
    if (
        mode & sgid_x == sgid_x
        and not stat.S_ISDIR(mode)
        and parent.mode & stat.S_ISGID
        and not creds.in_group_or_capable(parent.gid)
    ):
        return mode & ~stat.S_ISGID
    return mode


def _protected_hardlinks() -> bool:
    try:
        return _PROTECTED_HARDLINKS.read_text().strip() != "0"
    except OSError:
        return True
