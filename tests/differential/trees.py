"""Snapshots of trees in a comparable form, and the normaliser for upper directories.

A :class:`Snapshot` maps each path to a :class:`Node` (type, permission bits, owner, size,
sha256 of the content, symlink target, xattrs, rdev, and the mtime of non-directories when it
is older than the test: preserved from a lower, or set by ``utimes`` to a fixed old time).
Hard links appear as link groups (sets of paths sharing an inode) instead of raw ``st_nlink``,
which differs for reasons that do not matter (the kernel's index and shared whiteouts).

The same snapshot is taken of a directory (:func:`snapshot_dir`, for a kernel mount or an
upper on disk) and of a :class:`layerfs.Stack` (:func:`snapshot_stack`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from layerfs import whiteout
from tests import forms
from tests.property import layers as L

if TYPE_CHECKING:
    from layerfs import Stack
    from tests.property.model import Inode

# Objects with an mtime before this were preserved from a lower or set by utimes to a fixed
# old time; later ones were changed by the test at a time nobody can predict.
OLD_CUTOFF_NS = 1_609_459_200 * 10**9  # 2021-01-01, before any test run and after OLD_NS

# xattrs the kernel writes for its own inode bookkeeping (index=on, nfs_export, xino): they say
# nothing about the merged view, and layerfs does not write them.
KERNEL_BOOKKEEPING_XATTRS = frozenset(
    forms.XATTR_PREFIX + name for name in ("origin", "impure", "nlink", "uuid")
)
OPAQUE_XATTR = forms.XATTR_PREFIX + "opaque"
METACOPY_XATTR = forms.XATTR_PREFIX + "metacopy"


@dataclass(frozen=True)
class Node:
    kind: str  # dir, file, symlink, fifo, chr, blk, sock, or whiteout (normalised uppers)
    mode: int = 0  # permission bits
    uid: int = 0
    gid: int = 0
    size: int | None = None  # None for directories
    sha256: str | None = None
    target: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    rdev: int = 0
    mtime_ns: int | None = None
    nlink: int | None = None  # directories of merged views only (1 for a merged directory)


@dataclass(frozen=True)
class Snapshot:
    nodes: Mapping[str, Node]
    links: frozenset[frozenset[str]]  # groups of two or more paths sharing one inode

    def differences(self, other: Snapshot) -> list[str]:
        """Human-readable differences, empty when equal."""
        out = []
        for path in sorted(set(self.nodes) | set(other.nodes)):
            a, b = self.nodes.get(path), other.nodes.get(path)
            if a != b:
                out.append(f"{path}: {a} != {b}")
        if self.links != other.links:
            out.append(
                f"link groups: {sorted(map(sorted, self.links))} != "
                f"{sorted(map(sorted, other.links))}"
            )
        return out


_KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


@dataclass(frozen=True)
class _Raw:
    """What a snapshot needs of one object, from whichever API."""

    mode: int
    uid: int
    gid: int
    size: int
    rdev: int
    mtime_ns: int
    nlink: int
    ino: int


def _node(
    raw: _Raw,
    since_ns: int,
    content: Callable[[], bytes],
    target: Callable[[], str],
    xattrs: dict[str, bytes],
    merged: bool,
) -> Node:
    kind = _KINDS[stat.S_IFMT(raw.mode)]
    is_dir = kind == "dir"
    return Node(
        kind=kind,
        mode=stat.S_IMODE(raw.mode) if kind != "symlink" else 0,
        uid=raw.uid,
        gid=raw.gid,
        size=None if is_dir else raw.size,
        sha256=hashlib.sha256(content()).hexdigest() if kind == "file" else None,
        target=target() if kind == "symlink" else None,
        xattrs=tuple(sorted(xattrs.items())),
        rdev=raw.rdev,
        mtime_ns=raw.mtime_ns if not is_dir and raw.mtime_ns < since_ns else None,
        nlink=raw.nlink if is_dir and merged else None,
    )


def _groups(inos: dict[str, int]) -> frozenset[frozenset[str]]:
    by_ino: dict[int, set[str]] = {}
    for path, ino in inos.items():
        by_ino.setdefault(ino, set()).add(path)
    return frozenset(frozenset(g) for g in by_ino.values() if len(g) > 1)


def _walk_dir(root: Path) -> Iterator[tuple[str, Path]]:
    yield "/", root
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root)
        base = "/" if rel == "/." else rel
        for name in sorted(dirnames + filenames):
            yield L.join(base, name), Path(dirpath) / name


def snapshot_dir(root: Path, since_ns: int, merged: bool = True) -> Snapshot:
    """Snapshot the tree at *root* (a mount or a plain directory) without following symlinks.

    *merged* records the nlink of directories (it is part of the merged view's contract).
    """
    nodes: dict[str, Node] = {}
    inos: dict[str, int] = {}
    for path, host in _walk_dir(root):
        try:
            st_ = host.lstat()
        except FileNotFoundError:
            # The kernel lists the whiteouts of a directory that is in one lower only (it
            # iterates the real directory) although looking them up finds nothing.
            continue
        raw = _Raw(
            st_.st_mode,
            st_.st_uid,
            st_.st_gid,
            st_.st_size,
            st_.st_rdev,
            st_.st_mtime_ns,
            st_.st_nlink,
            st_.st_ino,
        )
        names = os.listxattr(host, follow_symlinks=False)
        xattrs = {n: os.getxattr(host, n, follow_symlinks=False) for n in names}
        nodes[path] = _node(
            raw, since_ns, host.read_bytes, partial(os.readlink, host), xattrs, merged
        )
        if not stat.S_ISDIR(st_.st_mode) and not whiteout.is_whiteout_stat(st_):
            inos[path] = st_.st_ino
    return Snapshot(nodes, _groups(inos))


def _walk_stack(stack: Stack, path: str) -> Iterator[str]:
    yield path
    if stat.S_ISDIR(stack.lstat(path).mode):
        for name in stack.listdir(path):
            yield from _walk_stack(stack, L.join(path, name))


def snapshot_stack(stack: Stack, since_ns: int) -> Snapshot:
    """Snapshot the merged view of *stack* through its path API."""
    nodes: dict[str, Node] = {}
    inos: dict[str, int] = {}
    # Walk first, then stat: looking a name up may link a lower hard link into the upper,
    # which turns its parent into a merged directory (nlink 1) after the parent was seen.
    for path in list(_walk_stack(stack, "/")):
        s = stack.lstat(path)
        raw = _Raw(s.mode, s.uid, s.gid, s.size, s.rdev, s.mtime_ns, s.nlink, s.ino)
        xattrs = {n: stack.getxattr(path, n) for n in stack.listxattr(path)}
        nodes[path] = _node(
            raw,
            since_ns,
            partial(stack.read_bytes, path),
            partial(stack.readlink, path),
            xattrs,
            merged=True,
        )
        if not stat.S_ISDIR(s.mode):
            inos[path] = s.ino
    return Snapshot(nodes, _groups(inos))


def without_root(snap: Snapshot) -> Snapshot:
    """Drop the root's attributes: each side's root is its own fresh upper directory."""
    nodes = dict(snap.nodes)
    nodes["/"] = Node("dir")
    return Snapshot(nodes, snap.links)


# --- normalising upper directories ----------------------------------------------------------


def normalise_upper(snap: Snapshot, lower_view: Mapping[str, Inode]) -> Snapshot:
    """The meaning of an upper directory, free of encoding details that do not change it.

    * whiteouts compare as whiteouts, whatever their mode, owner or link count (the kernel
      shares one whiteout inode between names when it can);
    * the kernel's bookkeeping xattrs (:data:`KERNEL_BOOKKEEPING_XATTRS`) are dropped;
    * ``opaque`` is kept only where it hides something: a directory of the lowers' merged view
      (*lower_view*, from :func:`tests.property.model.flatten`) under no opaque ancestor. The
      kernel also marks directories created in a merged parent opaque, where it is a no-op;
    * a metacopy file (sparse, ``metacopy`` xattr, data still in the lower) compares equal to
      a full copy: its content is taken from the lower file of the same name or, failing that,
      from a lower file of one of its hard links.
    The workdir is never part of a snapshot.
    """
    nodes: dict[str, Node] = {}
    for path, node in snap.nodes.items():
        if node.kind == "chr" and node.rdev == 0:
            nodes[path] = Node("whiteout")
            continue
        xattrs = {k: v for k, v in node.xattrs if k not in KERNEL_BOOKKEEPING_XATTRS}
        if OPAQUE_XATTR in xattrs and not _opaque_matters(snap, lower_view, path):
            del xattrs[OPAQUE_XATTR]
        if METACOPY_XATTR in xattrs:
            del xattrs[METACOPY_XATTR]
            node = replace(node, sha256=_lower_sha(snap, lower_view, path))
        nodes[path] = replace(node, xattrs=tuple(sorted(xattrs.items())))
    return Snapshot(nodes, snap.links)


def _opaque_matters(snap: Snapshot, lower_view: Mapping[str, Inode], path: str) -> bool:
    lower = lower_view.get(path)
    if lower is None or lower.kind != "dir":
        return False
    ancestor = L.parent_of(path)
    while ancestor != "/":
        if OPAQUE_XATTR in dict(snap.nodes[ancestor].xattrs):
            return False
        ancestor = L.parent_of(ancestor)
    return True


def _lower_sha(snap: Snapshot, lower_view: Mapping[str, Inode], path: str) -> str:
    group = next((g for g in snap.links if path in g), frozenset({path}))
    for candidate in sorted(group, key=lambda p: p != path):
        lower = lower_view.get(candidate)
        if lower is not None and lower.kind == "file":
            return hashlib.sha256(lower.data).hexdigest()
    return "metacopy file without lower data"


# --- the reference model as a snapshot ------------------------------------------------------


def snapshot_model(nodes: Mapping[str, Inode]) -> Snapshot:
    """The model's merged view in snapshot form (directory nlink and sizes are not modelled)."""
    out: dict[str, Node] = {}
    for path, inode in nodes.items():
        kind = inode.kind
        out[path] = Node(
            kind=kind,
            mode=inode.mode if kind != "symlink" else 0,
            uid=inode.uid,
            gid=inode.gid,
            size=None
            if kind == "dir"
            else len(inode.target.encode())
            if kind == "symlink"
            else len(inode.data),
            sha256=hashlib.sha256(inode.data).hexdigest() if kind == "file" else None,
            target=inode.target if kind == "symlink" else None,
            xattrs=tuple(sorted(inode.xattrs.items())),
            mtime_ns=inode.mtime_ns if kind != "dir" else None,
        )
    groups: dict[int, set[str]] = {}
    for path, inode in nodes.items():
        if inode.kind != "dir":
            groups.setdefault(inode.ident, set()).add(path)
    return Snapshot(out, frozenset(frozenset(g) for g in groups.values() if len(g) > 1))


def as_model_sees(snap: Snapshot, model: Snapshot) -> Snapshot:
    """*snap* without what the model does not know: directory nlink, user-only xattrs, and the
    mtime of objects the test changed at an unknown time (the model records None there)."""
    nodes = {}
    for path, node in snap.nodes.items():
        known = model.nodes.get(path)
        mtime = node.mtime_ns if known is None or known.mtime_ns is not None else None
        xattrs = tuple((k, v) for k, v in node.xattrs if k.startswith("user."))
        nodes[path] = replace(node, nlink=None, mtime_ns=mtime, xattrs=xattrs)
    return Snapshot(nodes, snap.links)
