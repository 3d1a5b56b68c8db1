"""Layers: what one layer holds, before the union rules are applied to it.

The union rules (:mod:`layerfs.namei`, :mod:`layerfs.readdir`, :mod:`layerfs.copyup`) read
every layer through the small :class:`Layer` protocol and never learn what kind of layer they
read: a host directory (:class:`HostLayer`), or anything else that can list a directory, stat,
read and give xattrs (a table of contents over a registry blob, for one). A layer hands out
opaque *directory handles* (a descriptor, for a host directory) that the caller closes with
:meth:`Layer.close_dir`. Entries are reported as stored: a whiteout is whatever the layer's
encoding says (a 0/0 character device, a ``.wh.NAME`` file); :mod:`layerfs.whiteout` reads
them.

The upper layer is always a host directory: it is read through a :class:`HostLayer` and
written through :mod:`layerfs.upper`.

A layer never changes while a stack is assembled (the same rule as kernel overlayfs), which is
what lets the stack cache what it has read.

A :class:`~layerfs.options.StackSpec` names each lower layer by a host directory or by a
:class:`LayerSource`, which opens its layer when the stack is assembled (a partial layer of
the image store, read through its table of contents, is one).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Protocol

from layerfs import hostfs
from layerfs.types import StatFs

LayerDir = Any  # a directory handle: a descriptor for a HostLayer, the layer's own otherwise


class LayerFile(Protocol):
    """An open regular file of a layer: positional reads, and a host descriptor if it has one
    (then the kernel can copy or pass its data through without Python reading it)."""

    def fileno(self) -> int | None: ...

    def pread(self, size: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


class Layer(Protocol):
    """What a stack asks of one layer (see the module docstring)."""

    description: str

    def root(self) -> LayerDir: ...

    def open_dir(self, parent: LayerDir, name: str) -> LayerDir:
        """Directory *name* of *parent* (ENOENT, ENOTDIR; never through a symlink)."""

    def close_dir(self, handle: LayerDir) -> None: ...

    def entries(self, handle: LayerDir) -> list[tuple[str, int]]:
        """Every name of a directory with its ``S_IFMT`` kind, whiteouts and markers too."""

    def lstat(self, parent: LayerDir, name: str) -> os.stat_result | None:
        """The attributes of *name* (never following it), or None where there is none."""

    def readlink(self, parent: LayerDir, name: str) -> str: ...

    def listxattr(self, parent: LayerDir, name: str) -> list[str]: ...

    def getxattr(self, parent: LayerDir, name: str, attr: str) -> bytes | None: ...

    def dir_listxattr(self, handle: LayerDir) -> list[str]:
        """The xattr names of an open directory itself."""

    def dir_getxattr(self, handle: LayerDir, attr: str) -> bytes | None: ...

    def open_file(self, parent: LayerDir, name: str) -> LayerFile:
        """Open regular file *name* for reading."""

    def file_handle(self, parent: LayerDir, name: str) -> tuple[int, bytes] | None:
        """A handle naming the object wherever it is (``name_to_handle_at``), or None."""

    def find_by_handle(self, handle_type: int, handle: bytes) -> os.stat_result | None:
        """The object a :meth:`file_handle` names, where the layer can tell, else None."""

    def fs_uuid(self) -> bytes:
        """The UUID of the filesystem the layer's objects are on (16 zero bytes: unknown)."""

    def hard_links(self, st: os.stat_result) -> list[str]:
        """Every path (``/a/b``) of the layer that names the object *st* describes."""

    def statfs(self) -> StatFs: ...

    def close(self) -> None: ...


class LayerSource(Protocol):
    """A lower layer that is not a host directory, as a stack description names it.

    :meth:`open` is called once per stack assembled from the description; the stack closes
    the layer. *description* names the layer in messages and option strings.
    """

    description: str

    def open(self) -> Layer: ...


class HostFile:
    """A :class:`LayerFile` over a host descriptor (which it owns)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int | None:
        return self.fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        os.close(self.fd)


class HostLayer:
    """A layer that is a directory of the host, reached through descriptors only.

    Directory handles are descriptors: readable ones where the caller may read the
    directory, ``O_PATH`` ones where it may only search it. Nothing is ever reached through a
    symlink stored in the layer (see :mod:`layerfs.hostfs`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.description = os.fspath(path)
        self._root = hostfs.open_root(path)
        self.dev = os.fstat(self._root).st_dev
        self._links: dict[tuple[int, int], list[str]] | None = None

    def root(self) -> int:
        return self._root

    def open_dir(self, parent: int, name: str) -> int:
        return hostfs.open_dir_at(parent, name)

    def close_dir(self, handle: int) -> None:
        os.close(handle)

    def entries(self, handle: int) -> list[tuple[str, int]]:
        try:
            return _entries(handle)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
        try:
            return _entries(fd)  # an O_PATH handle: list through a readable descriptor
        finally:
            os.close(fd)

    def lstat(self, parent: int, name: str) -> os.stat_result | None:
        return hostfs.lstat_or_none(parent, name)

    def readlink(self, parent: int, name: str) -> str:
        return os.readlink(name, dir_fd=parent)

    def listxattr(self, parent: int, name: str) -> list[str]:
        return hostfs.listxattr_at(parent, name)

    def getxattr(self, parent: int, name: str, attr: str) -> bytes | None:
        return hostfs.getxattr_at(parent, name, attr)

    def dir_listxattr(self, handle: int) -> list[str]:
        return hostfs.fd_listxattr(handle)

    def dir_getxattr(self, handle: int, attr: str) -> bytes | None:
        return hostfs.fd_getxattr(handle, attr)

    def open_file(self, parent: int, name: str) -> HostFile:
        return HostFile(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent))

    def file_handle(self, parent: int, name: str) -> tuple[int, bytes] | None:
        return hostfs.file_handle(parent, name)

    def find_by_handle(self, handle_type: int, handle: bytes) -> os.stat_result | None:
        """Raises ``PermissionError`` without ``CAP_DAC_READ_SEARCH``."""
        fd = hostfs.open_by_handle(self._root, handle_type, handle)
        if fd is None:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def fs_uuid(self) -> bytes:
        return hostfs.fs_uuid(self._root)

    def hard_links(self, st: os.stat_result) -> list[str]:
        """Found by one walk of the layer the first time (kept: lower layers never change)."""
        if self._links is None:
            self._links = {}
            _collect_links(self._root, "", self._links)
        return self._links.get((st.st_dev, st.st_ino), [])

    def statfs(self) -> StatFs:
        st = os.statvfs(self._root)
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
        if self._root >= 0:
            os.close(self._root)
            self._root = -1


def _entries(fd: int) -> list[tuple[str, int]]:
    """One ``scandir`` of a readable directory descriptor (it rewinds it afterwards); kinds
    come from ``d_type`` where the filesystem gives it."""
    found: list[tuple[str, int]] = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):  # the common case first: one call
                found.append((entry.name, stat.S_IFREG))
            elif entry.is_dir(follow_symlinks=False):
                found.append((entry.name, stat.S_IFDIR))
            elif entry.is_symlink():
                found.append((entry.name, stat.S_IFLNK))
            else:
                found.append((entry.name, stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)))
    return found


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
