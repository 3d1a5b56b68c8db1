"""Classification of tar members into checked, normalised entries.

Every rule that can be decided from a member alone lives here, so that the ROOTFS pre-pass
and the extraction pass enforce exactly the same thing: names are made relative and free of
``.``/empty components, ``..`` and absolute names are refused, whiteouts must name one plain
child, hard-link targets obey the same rules as names (but an absolute target is read from the
root).
"""

from __future__ import annotations

import enum
import math
import tarfile
from dataclasses import dataclass

from layerfs.errors import LayerFormatError, UnsafeLayerError
from layerfs.whiteout import AUFS_META_PREFIX, OPAQUE_MARKER, WHITEOUT_PREFIX, whited_out_name

XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")  # PAX records that carry xattrs
XATTR_NAME_MAX = 255  # bytes, as Linux
XATTR_SIZE_MAX = 65536  # bytes of one xattr value, as Linux
ID_LIMIT = 1 << 32  # uids, gids and device numbers are unsigned 32-bit
MTIME_LIMIT = (1 << 63) // 1_000_000_000  # seconds either side of 1970 that fit in ns
NAME_MAX = 255  # bytes of one path component, as Linux
LINK_MAX = 4095  # bytes of a symlink target, as Linux (PATH_MAX less the NUL)


class Kind(enum.Enum):
    """What an entry asks the extractor to do."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    WHITEOUT = "whiteout"  # name: the child it deletes
    OPAQUE = "opaque"  # path: the directory that becomes opaque
    SKIP = "skip"  # AUFS metadata (".wh..wh.plnk" and the like)


@dataclass(frozen=True, slots=True)
class Entry:
    """One checked tar member: ``parent``/``name`` is where it goes, relative to the root."""

    raw: str
    kind: Kind
    parent: str  # "" is the root
    name: str  # "" only for the root directory itself
    link: str = ""  # hard-link target path, normalised

    @property
    def path(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name


def unsafe(raw: str, reason: str) -> UnsafeLayerError:
    return UnsafeLayerError(f"unsafe layer entry {raw!r}: {reason}")


def malformed(raw: str, reason: str) -> LayerFormatError:
    return LayerFormatError(f"bad layer entry {raw!r}: {reason}")


def normalise(raw: str, name: str, *, from_root: bool = False) -> list[str]:
    """The components of archive path *name*; refuses ``..`` and absolute paths.

    With *from_root* an absolute *name* means the same path relative to the layer's root
    (how kaniko writes hard-link targets).
    """
    if name.startswith("/") and not from_root:
        raise unsafe(raw, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise unsafe(raw, "path contains '..'")
    return parts


def _kind_of(member: tarfile.TarInfo) -> Kind:
    if member.isreg():
        return Kind.FILE
    if member.isdir():
        return Kind.DIR
    if member.issym():
        return Kind.SYMLINK
    if member.islnk():
        return Kind.HARDLINK
    if member.ischr():
        return Kind.CHAR
    if member.isblk():
        return Kind.BLOCK
    if member.isfifo():
        return Kind.FIFO
    raise malformed(member.name, f"unsupported entry type {member.type!r}")


def classify(member: tarfile.TarInfo, max_bytes: int) -> Entry:
    """Check *member* and say what it means; raises Unsafe/LayerFormatError naming it."""
    raw = member.name
    parts = normalise(raw, raw)
    if any(p.startswith(AUFS_META_PREFIX) and p != OPAQUE_MARKER for p in parts):
        return Entry(raw, Kind.SKIP, "", "")
    for part in parts[:-1]:
        if part.startswith(WHITEOUT_PREFIX):
            raise malformed(raw, f"a whiteout {part!r} used as a directory")
    if member.size > max_bytes:
        raise LayerFormatError(
            f"bad layer entry {raw!r}: size {member.size} exceeds the limit of {max_bytes} bytes"
        )
    _check_fields(raw, member)
    if not parts:
        if not member.isdir():
            raise unsafe(raw, "replaces the root directory")
        return Entry(raw, Kind.DIR, "", "")
    parent, name = "/".join(parts[:-1]), parts[-1]
    if name == OPAQUE_MARKER:
        return Entry(raw, Kind.OPAQUE, parent, "")
    if name.startswith(WHITEOUT_PREFIX):
        target = whited_out_name(name)
        if target is None or target in (".", ".."):
            raise unsafe(raw, f"whiteout of {name[len(WHITEOUT_PREFIX) :]!r}")
        return Entry(raw, Kind.WHITEOUT, parent, target)
    kind = _kind_of(member)
    if kind is Kind.HARDLINK:
        if not member.linkname:
            raise malformed(raw, "hard link without a target")
        target_parts = normalise(raw, member.linkname, from_root=True)
        if not target_parts:
            raise unsafe(raw, "hard link to the root directory")
        link = "/".join(target_parts)
        if link == "/".join(parts):
            raise malformed(raw, "hard link to itself")
        return Entry(raw, kind, parent, name, link)
    return Entry(raw, kind, parent, name)


def _check_fields(raw: str, member: tarfile.TarInfo) -> None:
    """Refuse header fields no file system can hold (PAX records can say anything)."""
    if "\0" in member.name or "\0" in member.linkname:
        raise malformed(raw, "a name or link target holds a NUL byte")
    if any(_length(part) > NAME_MAX for part in member.name.split("/")):
        raise malformed(raw, f"a name component is longer than {NAME_MAX} bytes")
    if _length(member.linkname) > LINK_MAX:
        raise malformed(raw, f"the link target is longer than {LINK_MAX} bytes")
    if member.size < 0:
        raise malformed(raw, f"negative size {member.size}")
    for what, number in (("uid", member.uid), ("gid", member.gid)):
        if not 0 <= number < ID_LIMIT:
            raise malformed(raw, f"{what} {number} is out of range")
    devices = (member.devmajor, member.devminor) if member.ischr() or member.isblk() else ()
    if not all(0 <= device < ID_LIMIT for device in devices):
        raise malformed(raw, "device numbers out of range")
    if not (math.isfinite(member.mtime) and abs(member.mtime) < MTIME_LIMIT):
        raise malformed(raw, f"mtime {member.mtime} is out of range")
    for key, value in member.pax_headers.items():
        for prefix in XATTR_PREFIXES:
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if _length(name) > XATTR_NAME_MAX:
                    raise malformed(
                        raw, f"xattr name {name[:40]!r}... is longer than {XATTR_NAME_MAX} bytes"
                    )
                if _length(value) > XATTR_SIZE_MAX:
                    raise malformed(raw, f"xattr {name!r} is larger than {XATTR_SIZE_MAX} bytes")


def _length(text: str) -> int:
    """Bytes of *text* on disk (names that are not UTF-8 arrive as surrogate escapes)."""
    return len(text.encode("utf-8", "surrogateescape"))
