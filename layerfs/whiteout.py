"""The one place that knows how deletions and opaque directories are written down.

Two encodings exist and layerfs reads both everywhere:

* **overlayfs** (what the kernel reads and writes): a whiteout is a character device with
  device number 0/0; an opaque directory carries the xattr ``trusted.overlay.opaque="y"``
  (``user.overlay.opaque`` when the upper belongs to an unprivileged user, ``userxattr``).
* **OCI / AUFS** (what image layer tars carry): a whiteout is a file named ``.wh.NAME``, an
  opaque directory holds a file named ``.wh..wh..opq``.

What layerfs *writes* into an upper directory is chosen by :class:`UpperFormat`; the default is
the kernel's privileged form, so that ``mount -t overlay`` reads the same upper.
"""

from __future__ import annotations

import enum
import os
import stat
import struct
import sys
from dataclasses import dataclass

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
AUFS_META_PREFIX = ".wh..wh."  # AUFS bookkeeping (".wh..wh.plnk"...): no data, no whiteout
WHITEOUT_MODE = stat.S_IFCHR  # an overlayfs whiteout: a character device ...
WHITEOUT_RDEV = 0  # ... with device number 0/0
TRUSTED_PREFIX = "trusted.overlay."
USER_PREFIX = "user.overlay."
PRIVATE_PREFIXES = (TRUSTED_PREFIX, USER_PREFIX)
OPAQUE_VALUE = b"y"
NAME_MAX = 255  # bytes in one name, on every Linux filesystem layerfs writes to


class XattrNamespace(enum.Enum):
    """Where the stack's own xattrs live: ``trusted.overlay.*`` (root) or ``user.overlay.*``."""

    TRUSTED = "trusted"
    USER = "user"

    @property
    def prefix(self) -> str:
        return TRUSTED_PREFIX if self is XattrNamespace.TRUSTED else USER_PREFIX


class WhiteoutStyle(enum.Enum):
    """How a whiteout is written: a 0/0 character device, or an OCI ``.wh.NAME`` file."""

    CHARDEV = "chardev"
    WH_FILE = "wh-file"


@dataclass(frozen=True, slots=True)
class UpperFormat:
    """The encoding layerfs writes into an upper directory."""

    xattrs: XattrNamespace = XattrNamespace.TRUSTED
    whiteouts: WhiteoutStyle = WhiteoutStyle.CHARDEV

    @property
    def opaque_xattr(self) -> str:
        return self.xattrs.prefix + "opaque"

    @property
    def metacopy_xattr(self) -> str:
        return self.xattrs.prefix + "metacopy"

    @property
    def origin_xattr(self) -> str:
        return self.xattrs.prefix + "origin"

    @property
    def impure_xattr(self) -> str:
        return self.xattrs.prefix + "impure"

    @classmethod
    def unprivileged(cls) -> UpperFormat:
        """The form an ordinary user can write: user xattrs and ``.wh.`` files."""
        return cls(XattrNamespace.USER, WhiteoutStyle.WH_FILE)


OPAQUE_XATTRS = (TRUSTED_PREFIX + "opaque", USER_PREFIX + "opaque")
METACOPY_XATTRS = (TRUSTED_PREFIX + "metacopy", USER_PREFIX + "metacopy")
ORIGIN_XATTRS = (TRUSTED_PREFIX + "origin", USER_PREFIX + "origin")
IMPURE_VALUE = b"y"

# The kernel's "origin" value (struct ovl_fb): what a copied-up object was copied from, as a
# file handle of the lower object. Version 0, magic 0xfb, total length, flags, handle type,
# filesystem UUID, then the handle itself. A zero-length value means "copied up, origin
# unknown" (the lower filesystem cannot encode handles).
_ORIGIN_HEADER = struct.Struct("<BBBBB16s")
_ORIGIN_MAGIC = 0xFB
_FLAG_BIG_ENDIAN, _FLAG_ANY_ENDIAN, _FLAG_PATH_UPPER = 1, 2, 4
_CPU_ENDIAN_FLAG = _FLAG_BIG_ENDIAN if sys.byteorder == "big" else 0


@dataclass(frozen=True, slots=True)
class Origin:
    """The lower object a copied-up object came from: a file handle and its filesystem."""

    handle_type: int
    handle: bytes
    uuid: bytes


def encode_origin(origin: Origin | None) -> bytes:
    """The ``*.overlay.origin`` value the kernel writes for *origin* (None: origin unknown)."""
    if origin is None:
        return b""
    length = _ORIGIN_HEADER.size + len(origin.handle)
    header = _ORIGIN_HEADER.pack(
        0, _ORIGIN_MAGIC, length, _CPU_ENDIAN_FLAG, origin.handle_type, origin.uuid
    )
    return header + origin.handle


def parse_origin(value: bytes) -> Origin | None:
    """Read an ``*.overlay.origin`` value; None for "unknown", a foreign format or byte order.

    A value that does not parse names no origin: the object is then numbered as a new one,
    which is what the kernel does with an origin it cannot decode.
    """
    if len(value) < _ORIGIN_HEADER.size:
        return None
    version, magic, length, flags, handle_type, uuid = _ORIGIN_HEADER.unpack_from(value)
    if version != 0 or magic != _ORIGIN_MAGIC or length != len(value):
        return None
    if flags & ~(_FLAG_BIG_ENDIAN | _FLAG_ANY_ENDIAN | _FLAG_PATH_UPPER):
        return None
    if not flags & _FLAG_ANY_ENDIAN and (flags & _FLAG_BIG_ENDIAN) != _CPU_ENDIAN_FLAG:
        return None
    return Origin(handle_type, value[_ORIGIN_HEADER.size :], uuid)


def is_private_xattr(name: str) -> bool:
    """Whether *name* belongs to the stack itself and is hidden from the merged view."""
    return name.startswith(PRIVATE_PREFIXES)


def is_whiteout_stat(st: os.stat_result) -> bool:
    """Whether a host object is an overlayfs whiteout (character device 0/0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == WHITEOUT_RDEV


def is_whiteout_name(name: str) -> bool:
    """Whether *name* is an OCI whiteout (``.wh.X``) or the opaque marker."""
    return name.startswith(WHITEOUT_PREFIX)


def whited_out_name(name: str) -> str | None:
    """The name an OCI whiteout file deletes; None for the opaque marker, for AUFS's own
    bookkeeping names (``.wh..wh.*``) and for names that are no whiteout."""
    if name == OPAQUE_MARKER or not name.startswith(WHITEOUT_PREFIX):
        return None
    target = name[len(WHITEOUT_PREFIX) :]
    if not target or target.startswith(WHITEOUT_PREFIX):
        return None
    return target


def whiteout_file_name(name: str) -> str:
    """The OCI whiteout file name that deletes *name* (as a tar member, where it may be long)."""
    return WHITEOUT_PREFIX + name


def oci_whiteout_name(name: str) -> str | None:
    """The ``.wh.`` file that would delete *name* in a layer directory, or None if it cannot exist.

    A name of more than ``NAME_MAX - 4`` bytes has no ``.wh.`` file on any filesystem: a reader
    skips the look (asking would fail with ENAMETOOLONG), and a writer cannot delete that name
    in the ``.wh.`` style at all.
    """
    whiteout = WHITEOUT_PREFIX + name
    if len(os.fsencode(whiteout)) > NAME_MAX:
        return None
    return whiteout


def is_opaque_value(value: bytes | None) -> bool:
    """Whether an ``*.overlay.opaque`` xattr value marks the directory opaque."""
    return value == OPAQUE_VALUE
