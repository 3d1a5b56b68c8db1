"""The backend-neutral request layer: what every FUSE request does, whoever decoded it.

Both session backends (pyfuse3 in :mod:`fuse_mount.operations`, the native protocol in
:mod:`fuse_mount.native`) decode a request, call one method here and encode the answer. This
layer owns what only FUSE has and both backends share: kernel inode numbers with lookup counts
and forget (:mod:`fuse_mount.inodes`), handle tables (:mod:`fuse_mount.handles`), cache
timeouts (:mod:`fuse_mount.attrs`), the caller's credentials (:class:`Caller`), owners shown
through an id mapping (:mod:`fuse_mount.idmap`) and the one errno translation
(:func:`errno_of`). Every decision about layers, whiteouts and copy-up is
the stack's.

Methods are synchronous and raise ``OSError`` / ``LayerfsError``; a backend turns those into
its error replies at one boundary with :func:`errno_of`. Names arrive and leave as the bytes
the kernel uses; the stack sees them decoded with ``surrogateescape``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import layerfs
from fuse_mount.attrs import Timeouts
from fuse_mount.handles import HandleTable, OpenDir, OpenFile
from fuse_mount.idmap import IdMap
from fuse_mount.inodes import InodeTable
from layerfs.errors import LayerfsError

if TYPE_CHECKING:
    from layerfs import FileHandle, Node, Stack
    from layerfs.types import Stat, StatFs

log = logging.getLogger(__name__)

# Flags the kernel has already applied by the time a FUSE open/create arrives; the handle must
# not apply them a second time (O_APPEND: the kernel sends the end-of-file offset itself).
KERNEL_FLAGS = os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the credentials new objects are created with, and the caller's
    umask where the kernel left it to the filesystem (``FUSE_DONT_MASK``; None where the
    kernel applied it to the mode already)."""

    uid: int
    gid: int
    pid: int
    umask: int | None = None

    def owner(self) -> dict[str, int]:
        """The stack's ownership keywords for an object this caller creates."""
        return {"uid": self.uid, "gid": self.gid}


class Attr(NamedTuple):
    """Attributes for a reply and how long the kernel may cache them (seconds).

    Named tuples, not frozen dataclasses, for the replies every request builds: a tuple is
    built several times faster.
    """

    st: Stat
    timeout: float


class Entry(NamedTuple):
    """A reply that names an object: ``st`` is None for "no such name" (a negative entry).

    When ``st`` is set the lookup count of ``nodeid`` (the kernel's name for the object,
    usually ``st.ino``) has been raised by one already.
    """

    st: Stat | None
    entry_timeout: float
    attr_timeout: float
    nodeid: int = 0


class Opened(NamedTuple):
    """An open file: its handle number, whether its cached pages stay valid, the handle."""

    fh: int
    keep_cache: bool
    handle: FileHandle
    nodeid: int


@dataclass(frozen=True, slots=True)
class Changes:
    """The fields of a setattr, each None when it is not to change."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None

    def keywords(self) -> dict[str, int]:
        return {k: v for k, v in _fields(self).items() if v is not None}


def _fields(changes: Changes) -> dict[str, int | None]:
    return {name: getattr(changes, name) for name in Changes.__dataclass_fields__}


Invalidate = Callable[[int], None]
"""Tells the kernel to drop its cached attributes of one inode (a notification)."""


def errno_of(exc: BaseException, what: str) -> int:
    """The one errno translation: OSError by its errno, LayerfsError by its class's errno.

    Anything else is a bug: it is logged with its traceback and the caller gets EIO.
    """
    if isinstance(exc, OSError):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("<- %s: %s", what, exc)
        return exc.errno or errno.EIO
    if isinstance(exc, LayerfsError):
        log.warning("%s: %s", what, exc)
        return exc.errno
    log.error("%s failed", what, exc_info=exc)
    return errno.EIO


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def decode(name: bytes) -> str:
    """``os.fsdecode`` for bytes, without its type checks (once per name of every request)."""
    return name.decode(_FS_ENCODING, _FS_ERRORS)


def encode(name: str) -> bytes:
    """``os.fsencode`` for str, without its type checks (once per entry of every listing)."""
    return name.encode(_FS_ENCODING, _FS_ERRORS)


class Requests:
    """A :class:`layerfs.Stack` as the FUSE protocol sees it (see the module docstring)."""

    def __init__(self, stack: Stack, timeouts: Timeouts, idmap: IdMap | None = None) -> None:
        self.stack = stack
        self.timeouts = timeouts
        self.idmap = idmap
        self.inodes = InodeTable(stack.root)
        self.files: HandleTable[OpenFile] = HandleTable()
        self.dirs: HandleTable[OpenDir] = HandleTable()
        self.invalidate: Invalidate | None = None

    # -- plumbing -------------------------------------------------------------------------
    def _timeout(self, node: Node) -> float:
        return self.timeouts.for_object(node.lower_only)

    def _entry(self, node: Node, st: Stat) -> Entry:
        """Hand *node* to the kernel: counts one lookup."""
        nodeid = self.inodes.remember(node)
        timeout = self.timeouts.lower if node.lower_only else self.timeouts.upper
        return Entry(st if self.idmap is None else self.idmap.show(st), timeout, timeout, nodeid)

    # -- owners: the one hook of fuse_mount.idmap ----------------------------------------------
    def _shown(self, st: Stat) -> Stat:
        """*st* with the owner the kernel is shown (through the id mapping, if any)."""
        return st if self.idmap is None else self.idmap.show(st)

    def _owner(self, caller: Caller) -> dict[str, int]:
        """The ownership keywords for an object *caller* creates, as stored."""
        if self.idmap is None:
            return caller.owner()
        return {"uid": self.idmap.stored_uid(caller.uid), "gid": self.idmap.stored_gid(caller.gid)}

    def _drop(self, node: Node | None) -> None:
        """The kernel no longer refers to *node*: let the stack free it (bounded memory)."""
        if node is not None:
            self.stack.forget(node)

    def _changed(self, node: Node) -> None:
        """After a change that may have copied *node* and its ancestors up: the kernel may hold
        their attributes with the long lower-only timeout, and a copied-up directory reports
        other attributes (a merged directory's nlink is 1), so those inodes are invalidated."""
        if self.invalidate is None:
            return
        current: Node | None = node
        while current is not None and current.aliases:
            if not self.inodes.became_upper(current):
                break
            self.invalidate(self.inodes.nodeid(current))
            current = current.aliases[0].parent

    def shutdown(self) -> None:
        """Close what the kernel left open at unmount (it sends no release/forget then)."""
        for item in self.files.drain():
            item.handle.close()
        self.dirs.drain()
        self.inodes.clear()

    # -- names -----------------------------------------------------------------------------
    def lookup(self, parent_ino: int, name: bytes) -> Entry:
        parent = self.inodes.node(parent_ino)
        try:
            node, st = self.stack.lookup_attr(parent, decode(name))
        except FileNotFoundError:
            timeout = self._timeout(parent)
            return Entry(None, timeout, timeout)
        return self._entry(node, st)

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """Drop lookups; never raises (there is no request to answer)."""
        for ino, count in items:
            try:
                self._drop(self.inodes.forget(ino, count))
            except Exception:
                log.exception("forget(%d, %d) failed", ino, count)

    def getattr(self, ino: int, fh: int | None = None) -> Attr:
        node = self.inodes.node(ino)
        try:
            st = self.stack.getattr(node)
        except FileNotFoundError:
            # Unlinked but still open: the open handle still reaches the object.
            item = self.files.get(fh) if fh else next(self.files.of_inode(ino), None)
            if item is None:
                raise
            st = item.handle.stat()
        return Attr(self._shown(st), self._timeout(node))

    def setattr(self, ino: int, changes: Changes, fh: int | None) -> Attr:
        """ftruncate through the open handle when there is one (its name may be gone)."""
        node = self.inodes.node(ino)
        handle = self.files.get(fh).handle if fh else None
        fields = changes.keywords()
        if self.idmap is None:
            st = self._setattr(node, handle, fields)
        else:
            apply = functools.partial(self._setattr, node, handle)
            st = self.idmap.apply_changes(apply, self.idmap.stored_changes(fields))
        self._changed(node)
        return Attr(self._shown(st), self._timeout(node))

    def _setattr(self, node: Node, handle: FileHandle | None, fields: dict[str, int]) -> Stat:
        fields = dict(fields)
        if handle is not None and "size" in fields:
            handle.truncate(fields.pop("size"))
            return self.stack.setattr(node, **fields) if fields else handle.stat()
        return self.stack.setattr(node, **fields)

    def readlink(self, ino: int) -> bytes:
        return encode(self.stack.readlink_node(self.inodes.node(ino)))

    def _created(self, parent: Node, node: Node) -> Entry:
        self._changed(parent)
        return self._entry(node, self.stack.getattr(node))

    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Entry:
        parent = self.inodes.node(parent_ino)
        owner = self._owner(caller)
        node = self.stack.mknod_at(parent, decode(name), mode, rdev, **owner, umask=caller.umask)
        return self._created(parent, node)

    def mkdir(self, parent_ino: int, name: bytes, mode: int, caller: Caller) -> Entry:
        parent = self.inodes.node(parent_ino)
        owner = self._owner(caller)
        node = self.stack.mkdir_at(parent, decode(name), mode, **owner, umask=caller.umask)
        return self._created(parent, node)

    def symlink(self, parent_ino: int, name: bytes, target: bytes, caller: Caller) -> Entry:
        parent = self.inodes.node(parent_ino)
        target_name = decode(target)
        node = self.stack.symlink_at(parent, decode(name), target_name, **self._owner(caller))
        return self._created(parent, node)

    def link(self, ino: int, parent_ino: int, name: bytes) -> Entry:
        node = self.inodes.node(ino)
        parent = self.inodes.node(parent_ino)
        linked = self.stack.link_at(node, parent, decode(name))
        self._changed(node)
        return self._created(parent, linked)

    def unlink(self, parent_ino: int, name: bytes) -> None:
        parent = self.inodes.node(parent_ino)
        self.stack.unlink_at(parent, decode(name))
        self._changed(parent)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        parent = self.inodes.node(parent_ino)
        self.stack.rmdir_at(parent, decode(name))
        self._changed(parent)

    def rename(
        self, old_parent_ino: int, old: bytes, new_parent_ino: int, new: bytes, flags: int
    ) -> None:
        """*flags*: 0, :data:`layerfs.RENAME_NOREPLACE` or :data:`layerfs.RENAME_EXCHANGE`."""
        if flags not in (0, layerfs.RENAME_NOREPLACE, layerfs.RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "unsupported rename flags")
        old_parent = self.inodes.node(old_parent_ino)
        new_parent = self.inodes.node(new_parent_ino)
        self.stack.rename_at(old_parent, decode(old), new_parent, decode(new), flags)
        self._changed(old_parent)
        self._changed(new_parent)

    # -- files -----------------------------------------------------------------------------
    @staticmethod
    def open_may_copy_up(flags: int) -> bool:
        """Whether an open with *flags* may copy up (so may take long: run it in a thread)."""
        return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)

    def open(self, ino: int, flags: int) -> Opened:
        node = self.inodes.node(ino)
        handle = self.stack.open_node(node, flags & ~KERNEL_FLAGS)
        if handle.writable:
            self._changed(node)
        return self._register(node, handle, ino)

    def create(
        self, parent_ino: int, name: bytes, flags: int, mode: int, caller: Caller
    ) -> tuple[Opened, Entry]:
        parent = self.inodes.node(parent_ino)
        owner = self._owner(caller)
        node, handle = self.stack.create(
            parent,
            decode(name),
            flags & ~KERNEL_FLAGS,
            mode,
            owner["uid"],
            owner["gid"],
            umask=caller.umask,
        )
        self._changed(parent)
        entry = self._entry(node, handle.stat())
        return self._register(node, handle, entry.nodeid), entry

    def _register(self, node: Node, handle: FileHandle, nodeid: int) -> Opened:
        """Register *handle*; a file that lives only in lower layers keeps its page cache."""
        self.inodes.pin(nodeid)
        lower_only = node.lower_only and not handle.writable
        fh = self.files.add(OpenFile(nodeid, handle, lower_only))
        return Opened(fh, lower_only, handle, nodeid)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self.files.get(fh).handle.read(size, offset)

    def read_may_block(self, fh: int) -> bool:
        """Whether a read of *fh* may wait for long: its layer serves the content without a
        host descriptor (a partial layer may fetch it first), so run it in a thread."""
        try:
            return not self.files.get(fh).handle.has_fileno()
        except OSError:
            return False  # not open: the read itself answers EBADF

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        """Write all of *data*: without direct_io the kernel expects every byte to be taken."""
        handle = self.files.get(fh).handle
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += handle.write(bytes(view[done:]), offset + done)
        return done

    def release(self, fh: int) -> OpenFile:
        item = self.files.pop(fh)
        try:
            item.handle.close()
        finally:
            self._drop(self.inodes.unpin(item.ino))
        return item

    def fsync(self, fh: int, datasync: bool) -> None:
        self.files.get(fh).handle.fsync(datasync)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        opened = self.files.get(fh)
        opened.handle.fallocate(mode, offset, length)
        self._changed(self.inodes.node(opened.ino))

    # -- directories -----------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        node = self.inodes.node(ino)
        names = self.stack.listdir_node(node)
        self.inodes.pin(ino)
        return self.dirs.add(OpenDir(ino, names))

    def readdir(
        self, fh: int, start: int, emit: Callable[[bytes, Entry, int], bool], plus: bool
    ) -> None:
        """Offer entries from index *start* to *emit(name, entry, next_offset)* until it says
        the reply is full (False). With *plus*, each accepted entry counts one lookup (the
        kernel keeps it as a dentry); without, ``entry.st`` is a stat the kernel only reads
        for the inode number and type.

        One name at a time: when the reply fills (in large directories) a name looked up
        beyond it would cost a host stat for nothing.
        """
        listing = self.dirs.get(fh)
        names = listing.names
        directory = self.inodes.node(listing.ino)
        lookup_attr = self.stack.lookup_attr
        inodes = self.inodes
        lower, upper = self.timeouts.lower, self.timeouts.upper
        idmap = self.idmap
        for index in range(start, len(names)):
            name = names[index]
            try:
                node, st = lookup_attr(directory, name)
            except FileNotFoundError:
                continue  # removed since opendir: may be left out, never repeated
            timeout = lower if node.lower_only else upper
            if idmap is not None:
                st = idmap.show(st)
            entry = Entry(st, timeout, timeout, inodes.nodeid(node))
            if not emit(encode(name), entry, index + 1):
                return
            if plus:
                inodes.remember(node)

    def releasedir(self, fh: int) -> None:
        self._drop(self.inodes.unpin(self.dirs.pop(fh).ino))

    def fsyncdir(self, fh: int) -> None:
        self.dirs.get(fh)  # namespace changes reach the host as they happen

    # -- extended attributes ---------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.stack.getxattr_node(self.inodes.node(ino), decode(name))

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        node = self.inodes.node(ino)
        self.stack.setxattr_node(node, decode(name), value, flags)
        self._changed(node)

    def listxattr(self, ino: int) -> list[bytes]:
        return [encode(n) for n in self.stack.listxattr_node(self.inodes.node(ino))]

    def removexattr(self, ino: int, name: bytes) -> None:
        node = self.inodes.node(ino)
        self.stack.removexattr_node(node, decode(name))
        self._changed(node)

    # -- filesystem ------------------------------------------------------------------------
    def statfs(self) -> StatFs:
        return self.stack.statfs()

    def access(self, ino: int, mode: int, caller: Caller, groups: set[int]) -> bool:
        """Only asked without default_permissions, which every mount sets; answered from the
        mode bits anyway so the answer is never wrong."""
        st = self._shown(self.stack.getattr(self.inodes.node(ino)))
        return may_access(st, mode, caller.uid, {caller.gid} | groups)


def may_access(st: Stat, mode: int, uid: int, groups: set[int]) -> bool:
    if mode == os.F_OK:
        return True
    if uid == 0:
        return not (mode & os.X_OK) or bool(st.mode & 0o111) or stat.S_ISDIR(st.mode)
    if st.uid == uid:
        bits = (st.mode >> 6) & 0o7
    elif st.gid in groups:
        bits = (st.mode >> 3) & 0o7
    else:
        bits = st.mode & 0o7
    return mode & bits == mode


def describe(result: Any) -> str:
    """A short, readable form of an answer for the debug log."""
    if isinstance(result, Entry):
        st = result.st
        return "negative" if st is None else f"ino={st.ino} mode={st.mode:o} size={st.size}"
    if isinstance(result, Attr):
        return f"ino={result.st.ino} mode={result.st.mode:o} size={result.st.size}"
    if isinstance(result, Opened):
        return f"fh={result.fh} keep_cache={result.keep_cache}"
    if isinstance(result, tuple):
        return ", ".join(describe(item) for item in result)
    if isinstance(result, (bytes, bytearray, memoryview)) and len(result) > 64:
        return f"<{len(result)} bytes>"
    return repr(result)
