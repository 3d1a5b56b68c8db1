"""Reading an upper directory (or any layer's) for a diff or a layer tar, in either encoding.

One directory is read at a time into a :class:`DirScan` by the core's own reader
(:func:`layerfs.readdir.scan`): its real children with their attributes, the names it whites
out (0/0 character devices and ``.wh.NAME`` files alike) and whether it is opaque. Whiteout
files and markers are never reported as children: they are encodings, not data.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from layerfs import readdir
from layerfs.layer import HostLayer
from layerfs.whiteout import is_private_xattr


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


def scan_dir(layer: HostLayer, handle: int) -> DirScan:
    """Read one directory of *layer* (a descriptor it handed out)."""
    listing = readdir.scan(layer, handle)
    scan = DirScan()
    scan.whiteouts = set(listing.oci_hidden)
    for name, _, whiteout in sorted(listing.entries, key=lambda e: sort_key(e[0])):
        if whiteout:
            scan.whiteouts.add(name)
            continue
        st = layer.lstat(handle, name)
        if st is not None:
            scan.children.append((name, st))
    scan.opaque = listing.opaque_marker or readdir.is_opaque(layer, handle)
    return scan
