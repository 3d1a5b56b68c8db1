"""POSIX ACLs of new objects: what a directory's default ACL gives what is created in it.

Kernel overlayfs leaves this to the VFS: a new object in a directory with a default ACL
inherits that ACL (``posix_acl_create``) and the caller's umask is ignored; without one, the
umask applies. A FUSE mount sees the same only when it asks the kernel for the mode before
the umask (``FUSE_DONT_MASK``): then this module makes the decision the VFS would.

The xattr form (``system.posix_acl_*``, ``include/uapi/linux/posix_acl_xattr.h``): a
version word (2), then one ``(tag, perm, id)`` entry of 8 bytes per ACL entry, little endian.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"

_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True)
class NewObject:
    """The mode of a new object and the ACL xattrs to give it (name -> value)."""

    mode: int
    xattrs: dict[str, bytes]


def _entries(value: bytes) -> list[list[int]] | None:
    """``[tag, perm, id]`` entries of an ACL xattr; None for a value that is not one."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        return None
    if _HEADER.unpack_from(value)[0] != _VERSION:
        return None
    count = (len(value) - _HEADER.size) // _ENTRY.size
    return [list(_ENTRY.unpack_from(value, _HEADER.size + i * _ENTRY.size)) for i in range(count)]


def pack(entries: list[list[int]]) -> bytes:
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(*entry) for entry in entries)


def inherit(default: bytes, mode: int) -> tuple[int, bytes | None]:
    """``posix_acl_create_masq``: *mode* narrowed by the default ACL, and the new object's
    access ACL (None where it says no more than the mode bits)."""
    entries = _entries(default)
    if entries is None:
        return mode, None
    extended = False
    group_obj = mask = None
    for entry in entries:
        tag = entry[0]
        if tag == USER_OBJ:
            entry[1] &= (mode >> 6) & 7
            mode &= (entry[1] << 6) | ~0o700
        elif tag in (USER, GROUP):
            extended = True
        elif tag == GROUP_OBJ:
            group_obj = entry
        elif tag == OTHER:
            entry[1] &= mode & 7
            mode &= entry[1] | ~0o007
        elif tag == MASK:
            mask = entry
            extended = True
    narrowing = mask if mask is not None else group_obj
    if narrowing is not None:
        narrowing[1] &= (mode >> 3) & 7
        mode &= (narrowing[1] << 3) | ~0o070
    return mode, pack(entries) if extended else None


def new_object(kind: int, mode: int, umask: int | None, default: bytes | None) -> NewObject:
    """Mode and ACLs of an object of *kind* created with *mode* in a directory whose default
    ACL is *default*. *umask* None: the kernel applied the caller's umask already."""
    if umask is None:
        return NewObject(mode, {})
    if default is None:
        return NewObject(mode & ~(umask & 0o777), {})
    mode, access = inherit(default, mode)
    xattrs = {} if access is None else {ACCESS: access}
    if kind == stat.S_IFDIR:
        xattrs[DEFAULT] = default
    return NewObject(mode, xattrs)
