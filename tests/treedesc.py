"""Describe a tree for interop comparisons: paths, types, modes, owners, sizes, content hashes
and link targets, read from a host directory or through a :class:`layerfs.Stack`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from layerfs import Stack

Tree = dict[str, tuple[Any, ...]]


def describe(
    mode: int, uid: int, gid: int, size: int, content: bytes | str | None
) -> tuple[Any, ...]:
    kind = stat.S_IFMT(mode)
    if stat.S_ISREG(mode):
        digest: Any = hashlib.sha256(content if isinstance(content, bytes) else b"").hexdigest()
        return (kind, stat.S_IMODE(mode), uid, gid, size, digest)
    if stat.S_ISLNK(mode):
        return (kind, uid, gid, content)
    return (kind, stat.S_IMODE(mode), uid, gid)


def host_tree(root: Path) -> Tree:
    """The description of a host directory (``umoci unpack`` output, a FUSE mount)."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            rel = "/" + str(path.relative_to(root))
            tree[rel] = describe(st.st_mode, st.st_uid, st.st_gid, st.st_size, content)
    return tree


def stack_tree(stack: Stack, path: str = "/") -> Tree:
    """The same description, read through the Stack API."""
    tree: Tree = {}
    for name in stack.listdir(path):
        child = f"{path.rstrip('/')}/{name}"
        st = stack.lstat(child)
        content: bytes | str | None = None
        if stat.S_ISREG(st.mode):
            content = stack.read_bytes(child)
        elif stat.S_ISLNK(st.mode):
            content = stack.readlink(child)
        tree[child] = describe(st.mode, st.uid, st.gid, st.size, content)
        if stat.S_ISDIR(st.mode):
            tree.update(stack_tree(stack, child))
    return tree
