"""The assembled stack's internals: layer roots, the node tree, lookup and inode numbers.

:class:`StackCore` resolves names top-down the way kernel overlayfs does (see
``docs/semantics.md``) and keeps the node tree that makes lookups cheap. The public
operations live in :mod:`layerfs.stack`; copy-up in :mod:`layerfs.copyup`.

Inode numbers: each node gets a small number the first time it is seen, keyed by the host
identity ``(layer position, st_dev, st_ino)`` of the object that defines it: a directory's
top-most lower directory, a non-directory's top-most object, or a metadata-only copy's lower
data. A copy-up registers the upper object under the node's existing number, so ``st_ino``
never changes while the stack is assembled and no two objects share one.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import stat
import threading
from pathlib import Path

from layerfs import hostfs
from layerfs.errors import oserror
from layerfs.node import (
    DIR,
    REG,
    UPPER,
    Alias,
    Items,
    MergedIndex,
    Node,
    build_index,
    is_opaque_dir,
    one_layer,
)
from layerfs.options import StackOptions, StackSpec
from layerfs.types import Stat
from layerfs.whiteout import (
    IMPURE_VALUE,
    METACOPY_XATTRS,
    OPAQUE_XATTRS,
    ORIGIN_XATTRS,
    Origin,
    encode_origin,
    is_whiteout_stat,
    oci_whiteout_name,
    parse_origin,
)

log = logging.getLogger(__name__)

ROOT_INO = 1
WORK_SUBDIR = "work"  # the kernel's name too: WORK/work holds copy-ups in progress

HostKey = tuple[int, int, int]  # (UPPER or LOWER, st_dev, st_ino)
LOWER = 1  # HostKey's first item for an object of any lower layer
_PACK_BITS = 48  # a lower object's number: its filesystem's index above a 48-bit inode number
_PACK_LIMIT = 1 << _PACK_BITS
_COUNTER_BASE = 1 << 62  # numbers handed out by the counter: never a packed number


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class StackCore:
    """Layer roots, the node tree and lookup; thread-safe under one re-entrant lock."""

    def __init__(self, spec: StackSpec) -> None:
        spec.validate()
        _raise_fd_limit()
        self.spec = spec
        self.options: StackOptions = spec.options
        self.lock = threading.RLock()
        self.metacopy_xattrs = METACOPY_XATTRS
        self._roots: list[int] = []
        self._inos: dict[HostKey, int] = {}
        self._linked: dict[HostKey, Node] = {}
        self._next_ino = _COUNTER_BASE
        self._lower_fs: dict[int, int] = {}  # st_dev of a lower filesystem -> its index
        self._fs_uuids: dict[int, bytes] = {}
        self._by_handle = True  # open_by_handle_at works (CAP_DAC_READ_SEARCH)
        self._layer_links: dict[int, dict[tuple[int, int], list[str]]] = {}
        self._tmp_counter = 0
        self.work_fd = -1
        try:
            self._open_layers(spec)
        except BaseException:
            self._close_roots()
            raise
        positions = tuple(range(0 if self.has_upper else 1, len(self._roots)))
        self.root = Node(ROOT_INO, DIR, positions)
        self.root.aliases.append(Alias(None, "", self.has_upper))

    # -- assembly ----------------------------------------------------------------------------
    def _open_layers(self, spec: StackSpec) -> None:
        self.has_upper = spec.upper is not None
        self._roots.append(hostfs.open_root(spec.upper) if spec.upper is not None else -1)
        for lower in spec.lowers:
            self._roots.append(hostfs.open_root(lower))
        for fd in self._roots[1:]:
            dev = os.stat(fd).st_dev
            if dev not in self._lower_fs:
                self._lower_fs[dev] = len(self._lower_fs) + 1
                self._fs_uuids[dev] = hostfs.fs_uuid(fd)
        if spec.work is not None:
            self.work_fd = self._prepare_work(spec.work)

    @staticmethod
    def _prepare_work(work: Path) -> int:
        """Open ``WORK/work``, first removing what an interrupted copy-up left behind."""
        work_root = hostfs.open_root(work)
        try:
            hostfs.remove_tree(work_root, WORK_SUBDIR)
            os.mkdir(WORK_SUBDIR, 0o700, dir_fd=work_root)
            return os.open(WORK_SUBDIR, hostfs.O_PATH_DIR, dir_fd=work_root)
        finally:
            os.close(work_root)

    def _close_roots(self) -> None:
        for fd in self._roots:
            if fd >= 0:
                os.close(fd)
        self._roots.clear()
        if self.work_fd >= 0:
            os.close(self.work_fd)
            self.work_fd = -1

    @property
    def readonly(self) -> bool:
        return not self.has_upper

    @property
    def lower_count(self) -> int:
        return len(self._roots) - 1

    def check_writable(self) -> None:
        if not self.has_upper:
            raise oserror(errno.EROFS)

    def tmpname(self) -> str:
        self._tmp_counter += 1
        return f"#layerfs-{os.getpid()}-{self._tmp_counter}"

    # -- host locations ----------------------------------------------------------------------
    def dirfd(self, node: Node, pos: int) -> int:
        """A descriptor of directory *node* in layer *pos* (cached on the node)."""
        if node is self.root:
            return self._roots[pos]
        fd = node.dirfds.get(pos)
        if fd is None:
            alias = node.aliases[0]
            assert alias.parent is not None
            fd = hostfs.open_dir_at(self.dirfd(alias.parent, pos), alias.name)
            node.dirfds[pos] = fd
        return fd

    def location(self, node: Node) -> tuple[int, str]:
        """``(dirfd, name)`` of the host object that defines *node* (upper first)."""
        if node is self.root:
            return self._roots[node.layers[0]], "."
        alias = node.upper_alias() if node.in_upper else node.aliases[0]
        if alias is None or alias.parent is None:
            raise oserror(errno.ENOENT)
        return self.dirfd(alias.parent, node.layers[0]), alias.name

    def upper_location(self, node: Node, alias: Alias | None = None) -> tuple[int, str]:
        if node is self.root:
            return self._roots[UPPER], "."
        alias = alias or node.upper_alias()
        assert alias is not None and alias.parent is not None and alias.in_upper
        return self.dirfd(alias.parent, UPPER), alias.name

    # -- index and lookup --------------------------------------------------------------------
    def index(self, node: Node) -> MergedIndex:
        if node.index is None:
            node.index = build_index([(pos, self.dirfd(node, pos)) for pos in node.layers])
        return node.index

    def lookup_locked(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise oserror(errno.ENOTDIR, name)
        if name == "." or name == "":
            return parent
        if name == "..":
            up = parent.aliases[0].parent
            return up if up is not None else self.root
        return self.lookup_stat_locked(parent, name)[0]

    def lookup_stat_locked(self, parent: Node, name: str) -> tuple[Node, os.stat_result | None]:
        """Like :meth:`lookup_locked`, with the host stat taken if the node was just made."""
        child = parent.children.get(name)
        if child is not None:
            return child, None
        items = self.index(parent).get(name)
        if items is None:
            raise oserror(errno.ENOENT, name)
        node, st = self._make_node(parent, name, items)
        parent.children[name] = node
        return node, st

    def _make_node(self, parent: Node, name: str, items: Items) -> tuple[Node, os.stat_result]:
        pos = items[0][0]
        pfd = self.dirfd(parent, pos)
        st = hostfs.lstat_at(pfd, name)
        kind = stat.S_IFMT(st.st_mode)
        if kind == DIR:
            return self._make_dir(parent, name, items, st), st
        data_pos = None
        if pos == UPPER and kind == REG and len(items) > 1 and self._is_metacopy(pfd, name):
            data_pos = items[1][0]
        if data_pos is not None:
            key_st = hostfs.lstat_at(self.dirfd(parent, data_pos), name)
            key = (LOWER, key_st.st_dev, key_st.st_ino)
        elif pos == UPPER:
            key_st = st
            key = self._upper_key(parent, name, st)
        else:
            key_st = st
            key = (LOWER, st.st_dev, st.st_ino)
        alias = Alias(parent, name, pos == UPPER)
        if key_st.st_nlink > 1:
            linked = self._linked.get(key)
            if linked is not None and linked.aliases:
                linked.aliases.append(alias)
                return linked, st
        node = Node(
            self._ino_for(key), kind, one_layer(pos) if data_pos is None else (UPPER, data_pos)
        )
        node.aliases.append(alias)
        if data_pos is not None:
            node.data_dirfd = os.open(".", hostfs.O_PATH_DIR, dir_fd=self.dirfd(parent, data_pos))
            node.data_name = name
        if key_st.st_nlink > 1:
            self._linked[key] = node
            node.linked = True
        return node, st

    def _make_dir(self, parent: Node, name: str, items: Items, st: os.stat_result) -> Node:
        candidates = [p for p, k in items if k == DIR]
        layers: list[int] = []
        opaque = False
        for i, pos in enumerate(candidates):
            layers.append(pos)
            is_last = i == len(candidates) - 1
            if (pos == UPPER or not is_last) and self._opaque_in(parent, pos, name):
                opaque = pos == UPPER
                break
        key_pos = next((p for p in layers if p != UPPER), None)
        if key_pos is None:
            key = self._upper_key(parent, name, st)
        else:
            if key_pos != layers[0]:
                st = hostfs.lstat_at(self.dirfd(parent, key_pos), name)
            key = (LOWER, st.st_dev, st.st_ino)
        node = Node(self._ino_for(key), DIR, tuple(layers))
        node.opaque = opaque
        node.aliases.append(Alias(parent, name, layers[0] == UPPER))
        return node

    def _opaque_in(self, parent: Node, pos: int, name: str) -> bool:
        """Whether directory *name* of *parent* is opaque in layer *pos*.

        The descriptor opened to ask is not kept: a directory seen in a listing may never be
        entered, and a deep stack would otherwise hold one descriptor per layer for every
        directory it has shown (:meth:`dirfd` opens them when the directory is entered).
        """
        fd = hostfs.open_dir_at(self.dirfd(parent, pos), name)
        try:
            return is_opaque_dir(fd, OPAQUE_XATTRS)
        finally:
            os.close(fd)

    def resolve_quiet(self, path: str) -> Node:
        """The node at *path* (no symlink followed); for internal walks under the lock."""
        node = self.root
        for part in path.split("/"):
            if part:
                node = self.lookup_locked(node, part)
        return node

    def lower_hardlinks(self, pos: int, st: os.stat_result) -> list[str]:
        """Every path of lower layer *pos* that is a hard link of the object *st*.

        The first call for a layer walks it once and remembers its multi-link files; it is
        made only when a hard-linked lower file is copied up, so that all its names can be
        linked to the copy (the kernel keeps an index directory for this).
        """
        links = self._layer_links.get(pos)
        if links is None:
            links = {}
            _collect_links(self._roots[pos], "", links)
            self._layer_links[pos] = links
        return links.get((st.st_dev, st.st_ino), [])

    def lower_positive(self, parent: Node, name: str) -> bool:
        """Whether a lower layer of *parent* shows *name*: removing it must leave a whiteout.

        Asked only when a name is removed, so the index need not remember every lower name.
        """
        for pos in parent.layers:
            if pos == UPPER:
                continue
            dirfd = self.dirfd(parent, pos)
            st = hostfs.lstat_or_none(dirfd, name)
            if st is not None:
                return not is_whiteout_stat(st)
            marker = oci_whiteout_name(name)
            if marker is not None and hostfs.lstat_or_none(dirfd, marker) is not None:
                return False
        return False

    def _upper_key(self, parent: Node, name: str, st: os.stat_result) -> HostKey:
        """The key of an upper object: its origin's, if it was copied up, else its own."""
        origin = self._read_origin(self.dirfd(parent, UPPER), name)
        if origin is not None:
            key = self._find_origin(parent, name, origin)
            if key is not None:
                return key
        return (UPPER, st.st_dev, st.st_ino)

    def _read_origin(self, dirfd: int, name: str) -> Origin | None:
        value = self._read_origin_value(dirfd, name)
        return parse_origin(value) if value else None

    @staticmethod
    def _read_origin_value(dirfd: int, name: str) -> bytes | None:
        for attr in ORIGIN_XATTRS:
            value = hostfs.getxattr_at(dirfd, name, attr)
            if value is not None:
                return value
        return None

    def _find_origin(self, parent: Node, name: str, origin: Origin) -> HostKey | None:
        """The lower object *origin* names: first where it was copied up from (same name in
        the top-most lower that has it), else by its handle, which needs
        ``CAP_DAC_READ_SEARCH`` (a renamed copy keeps its number only with it)."""
        for pos in parent.layers:
            if pos == UPPER:
                continue
            dirfd = self.dirfd(parent, pos)
            st = hostfs.lstat_or_none(dirfd, name)
            if st is None:
                continue
            if hostfs.file_handle(dirfd, name) == (origin.handle_type, origin.handle):
                return (LOWER, st.st_dev, st.st_ino)
            break
        return self._open_origin(origin)

    def _open_origin(self, origin: Origin) -> HostKey | None:
        if not self._by_handle:
            return None
        for pos in range(1, len(self._roots)):
            root = self._roots[pos]
            dev = os.stat(root).st_dev
            uuid = self._fs_uuids.get(dev, origin.uuid)
            if origin.uuid != uuid:
                continue
            try:
                fd = hostfs.open_by_handle(root, origin.handle_type, origin.handle)
            except PermissionError:
                self._by_handle = False
                return None
            if fd is None:
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            return (LOWER, st.st_dev, st.st_ino)
        return None

    def origin_value(self, lower_fd: int, name: str) -> bytes:
        """The ``origin`` value to record on the copy of lower object *name* (kernel format)."""
        handle = hostfs.file_handle(lower_fd, name)
        if handle is None:
            return encode_origin(None)
        uuid = self._fs_uuids.get(os.stat(lower_fd).st_dev, bytes(16))
        return encode_origin(Origin(handle[0], handle[1], uuid))

    def mark_impure(self, upper_dirfd: int) -> None:
        """Flag an upper directory as holding copied-up objects, as the kernel does (its
        readdir then reports their origin's inode numbers)."""
        attr = self.options.upper_format.impure_xattr
        if hostfs.fd_getxattr(upper_dirfd, attr) != IMPURE_VALUE:
            hostfs.fd_setxattr(upper_dirfd, attr, IMPURE_VALUE)

    def _is_metacopy(self, dirfd: int, name: str) -> bool:
        return any(hostfs.getxattr_at(dirfd, name, a) is not None for a in METACOPY_XATTRS)

    def _ino_for(self, key: HostKey) -> int:
        """The number of the object *key* names.

        A lower object's number is computed, not stored: its filesystem's index (in the order
        the lowers name them) in the high bits above its host inode number. It depends on
        nothing but the object (lower objects never change or go away while a stack is
        assembled), so a copied-up object that records its origin gets the same number in
        every later assembly. Upper objects, and the rare host inode too large to pack, get numbers
        from a counter in a range of their own, remembered in a map.
        """
        where, dev, host_ino = key
        fs_index = self._lower_fs.get(dev) if where == LOWER else None
        if fs_index is not None and host_ino < _PACK_LIMIT:
            return (fs_index << _PACK_BITS) | host_ino
        ino = self._inos.get(key)
        if ino is None:
            ino = self._allocate()
            self._inos[key] = ino
        return ino

    def _allocate(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def new_ino(self, st: os.stat_result) -> int:
        """A fresh number for an object the stack just created in the upper.

        Never reuses a number: the host may hand out the inode of a deleted object again
        while the kernel still remembers the old node under its number.
        """
        ino = self._allocate()
        self._inos[(UPPER, st.st_dev, st.st_ino)] = ino
        return ino

    def forget_upper(self, st: os.stat_result) -> None:
        """The host object *st* is being deleted from the upper: its identity may be reused."""
        key = (UPPER, st.st_dev, st.st_ino)
        self._inos.pop(key, None)
        self._linked.pop(key, None)

    def forget(self, node: Node) -> None:
        """Drop a node nobody refers to any more from the node tree, to bound memory.

        The FUSE mount calls this when the kernel forgets an inode. A node that still has
        open handles or cached children is kept (children point to their parent node).
        Looking the name up again gives a new node with the same inode number.
        """
        with self.lock:
            if node is self.root or node.handles > 0 or node.children:
                return
            for alias in node.aliases:
                parent = alias.parent
                if parent is not None and parent.children.get(alias.name) is node:
                    del parent.children[alias.name]
            if node.linked:  # scan the hard-link table only for nodes that are in it
                for key in [k for k, n in self._linked.items() if n is node]:
                    del self._linked[key]
            node.close_fds()

    def register_copy(self, node: Node, st: os.stat_result) -> None:
        """A whole-tree copy made a new upper object for *node*: keep the node's number."""
        self._inos[(UPPER, st.st_dev, st.st_ino)] = node.ino

    def register_upper(self, node: Node, st: os.stat_result) -> None:
        """Let the upper copy of *node* keep the node's inode number."""
        key = (UPPER, st.st_dev, st.st_ino)
        self._inos[key] = node.ino
        if not node.is_dir and (st.st_nlink > 1 or len(node.aliases) > 1):
            self._linked[key] = node
            node.linked = True

    # -- attributes --------------------------------------------------------------------------
    def host_stat(self, node: Node) -> os.stat_result:
        dirfd, name = self.location(node)
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)

    def to_stat(self, node: Node, st: os.stat_result) -> Stat:
        """Merged-view attributes: the node's inode number, nlink 1 for a merged directory
        (as the kernel reports it), and a metacopy file's block count from its data."""
        nlink = 1 if node.is_dir and node.merged() else st.st_nlink
        result = Stat.from_host(st, node.ino, nlink)
        if node.data_dirfd is not None:
            data = hostfs.lstat_at(node.data_dirfd, node.data_name)
            result = result._replace(blocks=data.st_blocks)
        return result


def _collect_links(dirfd: int, prefix: str, links: dict[tuple[int, int], list[str]]) -> None:
    """Walk a layer below *dirfd*, recording the paths of every multi-link non-directory."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        with os.scandir(fd) as it:
            entries = list(it)
        for entry in entries:
            path = f"{prefix}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, hostfs.O_PATH_DIR, dir_fd=fd)
                try:
                    _collect_links(sub, path, links)
                finally:
                    os.close(sub)
                continue
            st = entry.stat(follow_symlinks=False)
            if st.st_nlink > 1:
                links.setdefault((st.st_dev, st.st_ino), []).append(path)
    finally:
        os.close(fd)
