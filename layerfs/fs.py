"""The assembled stack's shared state: its layers, the node tree, inode numbers and locks.

:class:`Overlay` is what overlayfs calls the superblock (``struct ovl_fs``): layer positions
(0 the upper, 1..n the lowers, top-most first), the writer of the upper and work directories,
the root node, the inode numbers, and the locks. The operations live in their own modules and
take an ``Overlay``: :mod:`~layerfs.namei` (lookup), :mod:`~layerfs.readdir` (listings),
:mod:`~layerfs.inode` (numbers, attributes, xattrs), :mod:`~layerfs.copyup`,
:mod:`~layerfs.dirops` (creating, removing, renaming), :mod:`~layerfs.file` (open files);
:class:`layerfs.Stack` is the facade that takes the lock and calls them.

Locking. ``lock`` guards the node tree, the indexes, the inode tables and every change of the
upper's namespace; the facade holds it for each call, and the modules expect it held. The long
part of a copy-up (copying data, or a whole directory) runs without it: the object is marked
*busy* first (:meth:`Overlay.claim`), and every operation that would change a busy object, an
object under a busy directory, or move a directory with a busy object inside, waits for it
(:meth:`Overlay.wait_idle`). Lookups, attributes, listings and reads of other objects go on;
they see the object as it was until the copy is renamed into place under the lock.
"""

from __future__ import annotations

import errno
import os
import resource
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from layerfs import hostfs
from layerfs.errors import oserror
from layerfs.inode import InodeNumbers
from layerfs.layer import HostLayer, Layer
from layerfs.node import DIR, UPPER, Alias, Node
from layerfs.options import StackOptions, StackSpec
from layerfs.readdir import MergedIndex, build_index
from layerfs.types import StatFs
from layerfs.upper import Upper

ROOT_INO = 1
WORK_SUBDIR = "work"  # the kernel's name too: WORK/work holds copy-ups in progress


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Overlay:
    """Layers, the node tree, inode numbers and locks of one stack (module docstring)."""

    def __init__(self, spec: StackSpec, lowers: list[Layer] | None = None) -> None:
        """Assemble *spec*; *lowers*, when given, are the lower layers themselves (any
        :class:`~layerfs.layer.Layer`), top-most first, instead of ``spec.lowers``."""
        spec.validate(check_lowers=lowers is None)
        _raise_fd_limit()
        self.spec = spec
        self.options: StackOptions = spec.options
        self.lock = threading.Lock()
        self._idle = threading.Condition(self.lock)
        self._busy: dict[Node, int] = {}  # node -> thread ident doing its long copy
        self.layers: list[Layer] = []
        self.upper_layer: HostLayer | None = None
        self.upper = Upper(spec.options.upper_format, volatile=spec.options.volatile)
        self.work_fd = -1
        self._tmp_counter = 0
        try:
            self._open_layers(spec, lowers)
        except BaseException:
            self.close_layers()
            raise
        self.inodes = InodeNumbers(self.layers[1:])
        positions = tuple(range(0 if self.has_upper else 1, len(self.layers)))
        self.root = Node(ROOT_INO, DIR, positions)
        self.root.aliases.append(Alias(None, "", self.has_upper))

    # -- assembly ----------------------------------------------------------------------------
    def _open_layers(self, spec: StackSpec, lowers: list[Layer] | None) -> None:
        self.has_upper = spec.upper is not None
        if spec.upper is not None:
            self.upper_layer = HostLayer(spec.upper)
        # position 0 is the upper; a read-only stack keeps a placeholder there
        self.layers.append(self.upper_layer if self.upper_layer is not None else _NoUpper())
        if lowers is None:
            for lower in spec.lowers:
                self.layers.append(HostLayer(lower) if isinstance(lower, Path) else lower.open())
        else:
            self.layers.extend(lowers)
        if spec.work is not None:
            self.work_fd = self._prepare_work(spec.work)

    def _prepare_work(self, work: os.PathLike[str]) -> int:
        """Open ``WORK/work``, first removing what an interrupted copy-up left behind."""
        work_root = hostfs.open_root(work)
        try:
            self.upper.remove_tree(work_root, WORK_SUBDIR)
            self.upper.mkdir(work_root, WORK_SUBDIR)
            return os.open(WORK_SUBDIR, hostfs.O_PATH_DIR, dir_fd=work_root)
        finally:
            os.close(work_root)

    def close_layers(self) -> None:
        for layer in self.layers:
            layer.close()
        self.layers.clear()
        if self.work_fd >= 0:
            os.close(self.work_fd)
            self.work_fd = -1

    @property
    def readonly(self) -> bool:
        return not self.has_upper

    def check_writable(self) -> None:
        if not self.has_upper:
            raise oserror(errno.EROFS)

    def tmpname(self) -> str:
        """A fresh name in the work directory."""
        self._tmp_counter += 1
        return f"#layerfs-{os.getpid()}-{self._tmp_counter}"

    def statfs(self) -> StatFs:
        return self.layers[UPPER if self.has_upper else 1].statfs()

    # -- where things are --------------------------------------------------------------------
    def dir(self, node: Node, pos: int) -> Any:
        """The handle of directory *node* in layer *pos* (opened once, kept on the node)."""
        if node is self.root:
            return self.layers[pos].root()
        handle = node.dirs.get(pos)
        if handle is None:
            alias = node.aliases[0]
            assert alias.parent is not None
            handle = self.layers[pos].open_dir(self.dir(alias.parent, pos), alias.name)
            node.dirs[pos] = handle
        return handle

    def upper_dir(self, node: Node) -> int:
        """The descriptor of directory *node* in the upper (copied up already)."""
        fd: int = self.dir(node, UPPER)
        return fd

    def location(self, node: Node) -> tuple[Layer, Any, str]:
        """``(layer, parent handle, name)`` of the object that defines *node*, upper first."""
        pos = node.layers[0]
        if node is self.root:
            return self.layers[pos], self.layers[pos].root(), "."
        alias = node.upper_alias() if pos == UPPER else node.aliases[0]
        if alias is None or alias.parent is None:
            raise oserror(errno.ENOENT)
        return self.layers[pos], self.dir(alias.parent, pos), alias.name

    def upper_location(self, node: Node, alias: Alias | None = None) -> tuple[int, str]:
        """``(upper parent descriptor, name)`` of a node the upper has (under *alias*)."""
        if node is self.root:
            return self.layers[UPPER].root(), "."
        alias = alias or node.upper_alias()
        assert alias is not None and alias.parent is not None and alias.in_upper
        return self.upper_dir(alias.parent), alias.name

    def data_location(self, node: Node) -> tuple[Layer, Any, str]:
        """Where *node*'s file data is: its metacopy's lower, or the object itself."""
        if node.data is not None:
            pos, handle, name = node.data
            return self.layers[pos], handle, name
        return self.location(node)

    def index(self, node: Node) -> MergedIndex:
        """The merged listing of directory *node*, built on first need."""
        if node.index is None:
            node.index = build_index(
                [(pos, self.layers[pos], self.dir(node, pos)) for pos in node.layers]
            )
        return node.index

    def release(self, node: Node) -> None:
        """Close the handles *node* holds (its directories in each layer, its metacopy data)."""
        if node.dirs:
            for pos, handle in node.dirs.items():
                self.layers[pos].close_dir(handle)
            node.dirs.clear()
        if node.data is not None:
            pos, handle, _ = node.data
            self.layers[pos].close_dir(handle)
            node.data = None

    # -- busy objects ------------------------------------------------------------------------
    def _blocked(self, node: Node, subtree: bool) -> bool:
        me = threading.get_ident()
        for busy, owner in self._busy.items():
            if owner == me:
                continue
            if busy is node or busy.is_ancestor_of(node):
                return True
            if subtree and node.is_ancestor_of(busy):
                return True
        return False

    def wait_idle(self, node: Node, *, subtree: bool = False) -> None:
        """Wait (the lock held, released while waiting) until no other thread is copying
        *node* or a directory above it, and with *subtree* anything below it either."""
        while self._busy and self._blocked(node, subtree):
            self._idle.wait()

    def settle(self, *nodes: Node, subtree: Sequence[Node] = ()) -> bool:
        """True if no other thread's copy stands in the way of changing *nodes* (and what is
        under each of *subtree*); otherwise wait for one copy to end and return False: the
        caller then looks its names up again, since they may have changed meanwhile."""
        if not self._busy:
            return True
        blocked = any(self._blocked(n, False) for n in nodes)
        if blocked or any(self._blocked(n, True) for n in subtree):
            self._idle.wait()
            return False
        return True

    @contextmanager
    def claim(self, node: Node) -> Iterator[None]:
        """Mark *node* busy for the block: others wait to change it or what is under it."""
        self.wait_idle(node, subtree=True)
        self._busy[node] = threading.get_ident()
        try:
            yield
        finally:
            del self._busy[node]
            self._idle.notify_all()

    @contextmanager
    def unlocked(self) -> Iterator[None]:
        """Run the block without the lock (the long part of a copy of a busy node)."""
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()


class _NoUpper:
    """Position 0 of a read-only stack: there is no upper, and nothing may ask for one."""

    description = "(no upper)"

    def __getattr__(self, name: str) -> Any:
        raise oserror(errno.EROFS)

    def close(self) -> None:
        pass
