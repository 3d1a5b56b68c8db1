"""A partial layer as a lower layer of a stack: names from its TOC, content fetched on read.

:class:`TocLayer` implements the core's :class:`~layerfs.layer.Layer` protocol over the tree
a layer's TOC describes (:mod:`layerfs.lazy.tree`: exactly what the store's unpacked layer
directory of the same blob holds), so the union rules read it like any other layer. Names,
attributes, symlinks and xattrs are answered from memory at once; file content comes from
the layer's :class:`~layerfs.lazy.layer.LazyLayer` reader (chunk cache, partial blob, then
the registry, every chunk verified before it is served).

Opening a regular file picks the fastest source that has all of it, in order:

1. the store's unpacked directory of the layer, once the layer is complete and unpacked
   (background completion does that): a host file;
2. the whole file in the store's chunk cache (a file of one chunk is cached whole by its
   first read; a file of several is assembled from its cached chunks, and checked against
   the TOC's digest of the whole file, when it is opened again): a host file;
3. otherwise a :class:`TocFile`, whose reads fetch what they need, and the file's next
   :data:`READ_AHEAD` bytes in the same request (programs read files on: one round trip
   instead of one per kernel read). Each read is bounded by
   *timeout* seconds in all; a registry that is down or a chunk that does not match its
   digest makes that read fail with ``EIO`` (the remote and the reader log one line each),
   and the next read tries again.

A host file has a descriptor, so the FUSE mount can hand it to the kernel (passthrough).
Opening a file appends it to the layer's read order, which the next background completion
fetches first.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from layerfs import hostfs
from layerfs.errors import DigestMismatchError, LayerFormatError, RegistryError, oserror
from layerfs.layer import HostFile, LayerFile
from layerfs.lazy.decode import zeros
from layerfs.lazy.layer import LazyLayer
from layerfs.lazy.toc import TocEntry
from layerfs.lazy.tree import LayerTree, TreeNode
from layerfs.types import StatFs

log = logging.getLogger(__name__)

READ_TIMEOUT = 30.0  # seconds one read of content that is not local may take, in all
READ_AHEAD = 4 << 20  # bytes of a file fetched on, with a read that must fetch
BLKSIZE = 4096
_DEV_BASE = 1 << 62  # st_dev of TOC layers: never a host device number
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def layer_device(digest: str) -> int:
    """The ``st_dev`` a TOC layer of blob *digest* reports (the same in every mount)."""
    return _DEV_BASE | int(digest.split(":", 1)[1][:12], 16)


class TocFile:
    """An open regular file of a :class:`TocLayer` read through its TOC (no descriptor)."""

    __slots__ = ("_entry", "_layer")

    def __init__(self, layer: TocLayer, entry: TocEntry | None) -> None:
        self._layer = layer
        self._entry = entry

    def fileno(self) -> int | None:
        return None

    def pread(self, size: int, offset: int) -> bytes:
        if self._entry is None:
            return b""
        return self._layer.read(self._entry, offset, size)

    def close(self) -> None:
        pass


class TocLayer:
    """A lower layer over a partial layer's TOC (see the module docstring); thread-safe.

    *reader* reads the layer's content; *local_dir* is where the store unpacks the layer
    once it is complete; *statfs_path* a directory of the store's filesystem, whose
    statistics the layer reports.
    """

    def __init__(
        self,
        tree: LayerTree,
        reader: LazyLayer,
        *,
        local_dir: Path | None = None,
        statfs_path: Path | None = None,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self.reader = reader
        self.tree = tree
        self.timeout = timeout
        self.description = f"{reader.digest} (partial layer)"
        self.dev = layer_device(reader.digest)
        self.local_dir = local_dir
        self.statfs_path = statfs_path or reader.lazy.root
        self._stats: dict[int, os.stat_result] = {}
        self._links: dict[int, list[str]] | None = None
        self._local_fd = -1
        self._lock = threading.Lock()

    # -- directories ---------------------------------------------------------------------
    def root(self) -> TreeNode:
        return self.tree.root

    def open_dir(self, parent: TreeNode, name: str) -> TreeNode:
        child = self._child(parent, name)
        if not child.is_dir:
            raise oserror(errno.ENOTDIR, name)
        return child

    def close_dir(self, handle: TreeNode) -> None:
        pass

    def entries(self, handle: TreeNode) -> list[tuple[str, int]]:
        assert handle.children is not None
        return [(name, stat.S_IFMT(c.mode)) for name, c in handle.children.items()]

    # -- objects -------------------------------------------------------------------------
    def lstat(self, parent: TreeNode, name: str) -> os.stat_result | None:
        node = _get(parent, name)
        return None if node is None else self._stat(node)

    def readlink(self, parent: TreeNode, name: str) -> str:
        node = self._child(parent, name)
        if not stat.S_ISLNK(node.mode):
            raise oserror(errno.EINVAL, name)
        return node.link

    def listxattr(self, parent: TreeNode, name: str) -> list[str]:
        return list(self._child(parent, name).xattrs)

    def getxattr(self, parent: TreeNode, name: str, attr: str) -> bytes | None:
        return self._child(parent, name).xattrs.get(attr)

    def dir_listxattr(self, handle: TreeNode) -> list[str]:
        return list(handle.xattrs)

    def dir_getxattr(self, handle: TreeNode, attr: str) -> bytes | None:
        return handle.xattrs.get(attr)

    def file_handle(self, parent: TreeNode, name: str) -> tuple[int, bytes] | None:
        return None  # not a host filesystem: copies record "origin unknown"

    def find_by_handle(self, handle_type: int, handle: bytes) -> os.stat_result | None:
        return None

    def fs_uuid(self) -> bytes:
        return bytes.fromhex(self.reader.digest.split(":", 1)[1][:32])

    def hard_links(self, st: os.stat_result) -> list[str]:
        if st.st_dev != self.dev:
            return []
        with self._lock:
            if self._links is None:
                self._links = self.tree.links()
            return self._links.get(st.st_ino, [])

    def statfs(self) -> StatFs:
        st = os.statvfs(self.statfs_path)
        return StatFs(
            st.f_bsize,
            st.f_frsize,
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_favail,
            st.f_namemax,
        )

    def close(self) -> None:
        with self._lock:
            if self._local_fd >= 0:
                os.close(self._local_fd)
                self._local_fd = -1

    def _child(self, parent: TreeNode, name: str) -> TreeNode:
        node = _get(parent, name)
        if node is None:
            raise oserror(errno.ENOENT, name)
        return node

    def _stat(self, node: TreeNode) -> os.stat_result:
        found = self._stats.get(node.ino)
        if found is None:
            found = _stat_result(node, self.dev)
            self._stats[node.ino] = found
        return found

    # -- file content --------------------------------------------------------------------
    def open_file(self, parent: TreeNode, name: str) -> LayerFile:
        node = self._child(parent, name)
        if not stat.S_ISREG(node.mode):
            raise oserror(errno.EISDIR if node.is_dir else errno.EINVAL, name)
        self.reader.note(node.path)
        fd = self._unpacked_file(node)
        if fd is None and node.entry is not None and node.entry.size:
            fd = self._cached_file(node.entry)
        return TocFile(self, node.entry) if fd is None else HostFile(fd)

    def read(self, entry: TocEntry, offset: int, size: int) -> bytes:
        """Bytes of *entry*'s content, fetched within :attr:`timeout` seconds (EIO if not)."""
        deadline = time.monotonic() + self.timeout
        try:
            return self.reader.read_entry(entry, offset, size, deadline, READ_AHEAD)
        except RegistryError as exc:
            log.debug("%s: %s", entry.path, exc)  # the remote logs the outage once
            raise oserror(errno.EIO, entry.path) from exc
        except (DigestMismatchError, LayerFormatError) as exc:
            raise oserror(errno.EIO, entry.path) from exc  # the reader logged it

    def _unpacked_file(self, node: TreeNode) -> int | None:
        """A descriptor of *node* in the layer's unpacked directory, once there is one."""
        root = self._local_root()
        if root < 0:
            return None
        try:
            return hostfs.open_beneath(root, node.path.lstrip("/"), _O_READ)
        except OSError as exc:
            log.debug("%s: not in %s: %s", node.path, self.local_dir, exc)
            return None

    def _local_root(self) -> int:
        with self._lock:
            if self._local_fd >= 0 or self.local_dir is None:
                return self._local_fd
            if not os.path.isdir(self.local_dir):
                return -1
            try:
                self._local_fd = hostfs.open_root(self.local_dir)
            except OSError:
                return -1
            log.info(
                "layer %s is local now: files open from %s", self.reader.digest, self.local_dir
            )
            return self._local_fd

    def _cached_file(self, entry: TocEntry) -> int | None:
        """A descriptor of the whole file in the chunk cache, assembled there if every
        chunk is cached and the TOC gives the whole file's digest."""
        cache = self.reader.lazy.chunks
        whole = _whole_digest(entry)
        if whole is None:
            return None
        fd = cache.open(whole, entry.size)
        if fd is not None or len(entry.chunks) < 2:
            return fd
        if not all(c.zeros or cache.has(c.digest) for c in entry.chunks):
            return None
        try:
            cache.put_pieces(whole, self._pieces(entry))
        except (DigestMismatchError, LayerFormatError, OSError) as exc:
            log.warning("%s: cannot assemble from cached chunks: %s", entry.path, exc)
            return None
        return cache.open(whole, entry.size)

    def _pieces(self, entry: TocEntry) -> Iterator[bytes]:
        cache = self.reader.lazy.chunks
        for chunk in entry.chunks:
            data = zeros(chunk) if chunk.zeros else cache.get(chunk.digest)
            if data is None:
                raise LayerFormatError(f"chunk {chunk.digest} left the cache")
            yield data


def _whole_digest(entry: TocEntry) -> str | None:
    """The digest of *entry*'s whole content: the TOC's, or that of its only chunk."""
    chunks = entry.chunks
    if len(chunks) == 1 and not chunks[0].zeros and chunks[0].size == entry.size:
        return chunks[0].digest
    return entry.digest


def _get(parent: TreeNode, name: str) -> TreeNode | None:
    """Child *name* of directory *parent* (``.``: *parent* itself), or None."""
    if parent.children is None:
        raise oserror(errno.ENOTDIR, name)
    return parent if name == "." else parent.children.get(name)


def _stat_result(node: TreeNode, dev: int) -> os.stat_result:
    size = node.size
    mtime = node.mtime_ns
    seconds = mtime // 1_000_000_000
    extra = {
        "st_atime": mtime / 1e9,
        "st_mtime": mtime / 1e9,
        "st_ctime": mtime / 1e9,
        "st_atime_ns": mtime,
        "st_mtime_ns": mtime,
        "st_ctime_ns": mtime,
        "st_blksize": BLKSIZE,
        "st_blocks": (size + 511) // 512,
        "st_rdev": node.rdev,
    }
    fields = (node.mode, node.ino, dev, node.nlink, node.uid, node.gid, size, seconds)
    return os.stat_result((*fields, seconds, seconds), extra)
