"""Describe a tree for interop comparisons: paths, types, modes, owners, sizes, content hashes,
link targets, device numbers and xattrs of every object, the root directory ("/") included,
read from a host directory or through a :class:`layerfs.Stack`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from layerfs import Stack
from layerfs.whiteout import is_private_xattr

Tree = dict[str, tuple[Any, ...]]
Xattrs = tuple[tuple[str, bytes], ...]


def describe(
    mode: int,
    uid: int,
    gid: int,
    size: int,
    content: bytes | str | None,
    xattrs: Xattrs = (),
    rdev: int = 0,
) -> tuple[Any, ...]:
    kind = stat.S_IFMT(mode)
    if stat.S_ISREG(mode):
        digest: Any = hashlib.sha256(content if isinstance(content, bytes) else b"").hexdigest()
        return (kind, stat.S_IMODE(mode), uid, gid, xattrs, size, digest)
    if stat.S_ISLNK(mode):
        return (kind, uid, gid, xattrs, content)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return (kind, stat.S_IMODE(mode), uid, gid, xattrs, os.major(rdev), os.minor(rdev))
    return (kind, stat.S_IMODE(mode), uid, gid, xattrs)


def _shown(names: list[str]) -> list[str]:
    """xattrs an image carries: not the overlay's own, nor the host's security labels."""
    return sorted(n for n in names if not is_private_xattr(n) and n != "security.selinux")


def _host_xattrs(path: Path) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in _shown(names))


def _host_object(path: Path) -> tuple[Any, ...]:
    st = os.lstat(path)
    content: bytes | str | None = None
    if stat.S_ISREG(st.st_mode):
        content = path.read_bytes()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    return describe(
        st.st_mode, st.st_uid, st.st_gid, st.st_size, content, _host_xattrs(path), st.st_rdev
    )


def host_tree(root: Path, *, listed_whiteouts: bool = False) -> Tree:
    """The description of a host directory (``umoci unpack`` output, a FUSE mount).

    *listed_whiteouts*: skip names a listing shows but a lookup does not find (kernel
    overlayfs lists the whiteouts of a directory that only one lower layer has).
    """
    tree: Tree = {"/": _host_object(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if listed_whiteouts and not os.path.lexists(path):
                continue
            tree["/" + str(path.relative_to(root))] = _host_object(path)
    return tree


def _stack_object(stack: Stack, path: str) -> tuple[Any, ...]:
    st = stack.lstat(path)
    content: bytes | str | None = None
    if stat.S_ISREG(st.mode):
        content = stack.read_bytes(path)
    elif stat.S_ISLNK(st.mode):
        content = stack.readlink(path)
    xattrs = tuple((n, stack.getxattr(path, n)) for n in _shown(stack.listxattr(path)))
    return describe(st.mode, st.uid, st.gid, st.size, content, xattrs, st.rdev)


def stack_tree(stack: Stack, path: str = "/") -> Tree:
    """The same description, read through the Stack API."""
    tree: Tree = {path: _stack_object(stack, path)} if path == "/" else {}
    for name in stack.listdir(path):
        child = f"{path.rstrip('/')}/{name}"
        tree[child] = _stack_object(stack, child)
        if stat.S_ISDIR(tree[child][0]):
            tree.update(stack_tree(stack, child))
    return tree
