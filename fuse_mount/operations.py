"""The pyfuse3 request handlers: decode the request, call the stack, convert the answer.

No union semantics live here: every decision about layers, whiteouts and copy-up is the
stack's. This module owns what only FUSE has: kernel inode numbers and lookup counts
(:mod:`fuse_mount.inodes`), handle numbers (:mod:`fuse_mount.handles`), cache timeouts
(:mod:`fuse_mount.attrs`) and the translation of errors into ``FUSEError``.

Cheap metadata requests (lookup, getattr, readdir, xattr reads) run inline in the trio loop;
anything that moves data or may copy up runs in a worker thread under a capacity limiter, so a
large copy-up never stalls the other requests.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FUSEError

import layerfs
from fuse_mount.attrs import Timeouts, entry_attributes, negative_entry, statvfs_data
from fuse_mount.handles import HandleTable, OpenDir, OpenFile
from fuse_mount.inodes import InodeTable
from layerfs.errors import LayerfsError

if TYPE_CHECKING:
    from layerfs import FileHandle, Node, Stack
    from layerfs.types import Stat

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Flags the kernel has already applied by the time a FUSE open/create arrives; the handle must
# not apply them a second time (O_APPEND: the kernel sends the end-of-file offset itself).
_KERNEL_FLAGS = os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC
_RENAME_FLAGS = {
    0: 0,
    int(pyfuse3.RENAME_NOREPLACE): layerfs.RENAME_NOREPLACE,
    int(pyfuse3.RENAME_EXCHANGE): layerfs.RENAME_EXCHANGE,
}


def _boundary(
    handler: Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]]:
    """The one place errors become ``FUSEError``: OSError by errno, LayerfsError by its errno.

    Anything else is a bug: it is logged with its traceback and the caller gets EIO. With
    debug logging on, every request and its outcome is logged as well.
    """
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("-> %s%r", name, args)
        try:
            result = await handler(self, *args, **kwargs)
        except OSError as exc:
            if debug:
                log.debug("<- %s: %s", name, exc)
            raise FUSEError(exc.errno or errno.EIO) from None
        except LayerfsError as exc:
            log.warning("%s%r: %s", name, args, exc)
            raise FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s%r failed", name, args)
            raise FUSEError(errno.EIO) from None
        if debug:
            log.debug("<- %s: %s", name, _describe(result))
        return result

    return wrapper


def _describe(result: object) -> str:
    """A short, readable form of a handler's answer for the debug log."""
    if isinstance(result, pyfuse3.EntryAttributes):
        return f"ino={result.st_ino} mode={result.st_mode:o} size={result.st_size}"
    if isinstance(result, pyfuse3.FileInfo):
        return f"fh={result.fh} keep_cache={result.keep_cache}"
    if isinstance(result, tuple):
        return ", ".join(_describe(item) for item in result)
    if isinstance(result, bytes) and len(result) > 64:
        return f"<{len(result)} bytes>"
    return repr(result)


class Operations(pyfuse3.Operations):
    """A :class:`layerfs.Stack` served to the kernel through pyfuse3."""

    # The kernel must not send "." and ".." lookups (NFS export support is not offered).
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, stack: Stack, *, timeouts: Timeouts, threads: int) -> None:
        super().__init__()
        self.stack = stack
        self.timeouts = timeouts
        self.inodes = InodeTable(stack.root)
        self.files: HandleTable[OpenFile] = HandleTable()
        self.dirs: HandleTable[OpenDir] = HandleTable()
        self._limiter = trio.CapacityLimiter(threads)

    # -- plumbing -------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking stack call (data I/O, anything that may copy up) off the loop."""
        call = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    def _timeout(self, node: Node) -> float:
        return self.timeouts.for_object(node.lower_only)

    def _reply(self, node: Node, st: Stat) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that hands *node* to the kernel: counts one lookup."""
        self.inodes.remember(node)
        return entry_attributes(st, self._timeout(node))

    def init(self) -> None:
        log.debug("FUSE session initialised")

    def shutdown(self) -> None:
        """Close what the kernel left open at unmount (it sends no release/forget then)."""
        for item in self.files.drain():
            item.handle.close()
        self.dirs.drain()
        self.inodes.clear()

    # -- names -----------------------------------------------------------------------------
    @_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.node(parent_inode)
        try:
            node, st = self.stack.lookup_attr(parent, os.fsdecode(name))
        except FileNotFoundError:
            return negative_entry(self._timeout(parent))
        return self._reply(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Must never raise: there is no request to answer.
        for ino, count in inode_list:
            try:
                self._drop(self.inodes.forget(ino, count))
            except Exception:
                log.exception("forget(%d, %d) failed", ino, count)

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        try:
            st = self.stack.getattr(node)
        except FileNotFoundError:
            # Unlinked but still open: the open handle still reaches the object.
            item = next(self.files.of_inode(inode), None)
            if item is None:
                raise
            st = item.handle.stat()
        return entry_attributes(st, self._timeout(node))

    @_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        changes = _setattr_changes(attr, fields)
        handle = self.files.get(fh).handle if fh is not None else None
        st = await self._in_thread(_apply_setattr, self.stack, node, handle, changes)
        return entry_attributes(st, self._timeout(node))

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(self.stack.readlink_node(self.inodes.node(inode)))

    @_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.node(parent_inode)
        node, st = await self._in_thread(
            _created,
            self.stack,
            self.stack.mknod_at,
            parent,
            os.fsdecode(name),
            mode,
            rdev,
            uid=ctx.uid,
            gid=ctx.gid,
        )
        return self._reply(node, st)

    @_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.node(parent_inode)
        node, st = await self._in_thread(
            _created,
            self.stack,
            self.stack.mkdir_at,
            parent,
            os.fsdecode(name),
            mode,
            uid=ctx.uid,
            gid=ctx.gid,
        )
        return self._reply(node, st)

    @_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.node(parent_inode)
        node, st = await self._in_thread(
            _created,
            self.stack,
            self.stack.symlink_at,
            parent,
            os.fsdecode(name),
            os.fsdecode(target),
            uid=ctx.uid,
            gid=ctx.gid,
        )
        return self._reply(node, st)

    @_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        parent = self.inodes.node(new_parent_inode)
        linked, st = await self._in_thread(
            _created, self.stack, self.stack.link_at, node, parent, os.fsdecode(new_name)
        )
        return self._reply(linked, st)

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.node(parent_inode)
        await self._in_thread(self.stack.unlink_at, parent, os.fsdecode(name))

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.node(parent_inode)
        await self._in_thread(self.stack.rmdir_at, parent, os.fsdecode(name))

    @_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags not in _RENAME_FLAGS:
            raise OSError(errno.EINVAL, "unsupported rename flags")
        old_parent = self.inodes.node(parent_inode_old)
        new_parent = self.inodes.node(parent_inode_new)
        await self._in_thread(
            self.stack.rename_at,
            old_parent,
            os.fsdecode(name_old),
            new_parent,
            os.fsdecode(name_new),
            _RENAME_FLAGS[flags],
        )

    # -- files -----------------------------------------------------------------------------
    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.node(inode)
        flags &= ~_KERNEL_FLAGS
        if (flags & os.O_ACCMODE) == os.O_RDONLY and not flags & os.O_TRUNC:
            handle = self.stack.open_node(node, flags)  # no copy-up: one open(2), inline
        else:
            handle = await self._in_thread(self.stack.open_node, node, flags)
        return self._file_info(inode, handle)

    @_boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.inodes.node(parent_inode)
        node, handle, st = await self._in_thread(
            _create,
            self.stack,
            parent,
            os.fsdecode(name),
            flags & ~_KERNEL_FLAGS,
            mode,
            ctx.uid,
            ctx.gid,
        )
        attr = self._reply(node, st)
        return self._file_info(node.ino, handle), attr

    def _file_info(self, ino: int, handle: FileHandle) -> pyfuse3.FileInfo:
        """Register *handle*; a file that lives only in lower layers keeps its page cache."""
        node = self.inodes.pin(ino)
        lower_only = node.lower_only and not handle.writable
        fh = self.files.add(OpenFile(ino, handle, lower_only))
        return pyfuse3.FileInfo(fh=fh, keep_cache=lower_only)

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # Inline: a pread of at most max_read bytes; a thread hop would cost more than it
        # saves, and the kernel's readahead keeps cold sequential reads streaming.
        return self.files.get(fh).handle.read(size, off)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return _write_all(self.files.get(fh).handle, buf, off)  # into the page cache: inline

    @_boundary
    async def flush(self, fh: int) -> None:
        """Nothing is buffered here (data goes straight to the host file), so tell the kernel
        once, with ENOSYS, to stop sending FLUSH at every close: one request less per file."""
        raise OSError(errno.ENOSYS, "flush is not needed")

    @_boundary
    async def release(self, fh: int) -> None:
        item = self.files.pop(fh)
        try:
            item.handle.close()
        finally:
            self._drop(self.inodes.unpin(item.ino))

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.files.get(fh).handle
        await self._in_thread(handle.fsync, datasync)

    # -- directories -----------------------------------------------------------------------
    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.inodes.node(inode)
        names = self.stack.listdir_node(node)
        self.inodes.pin(inode)
        return self.dirs.add(OpenDir(inode, names))

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.dirs.get(fh)
        directory = self.inodes.node(listing.ino)
        # One name at a time: when the reply buffer fills (in large directories) a name looked
        # up beyond it would cost a host stat for nothing.
        for index in range(start_id, len(listing.names)):
            name = listing.names[index]
            try:
                node, st = self.stack.lookup_attr(directory, name)
            except FileNotFoundError:
                continue  # removed since opendir: may be left out, never repeated
            attr = entry_attributes(st, self._timeout(node))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, index + 1):
                return
            self.inodes.remember(node)

    @_boundary
    async def releasedir(self, fh: int) -> None:
        self._drop(self.inodes.unpin(self.dirs.pop(fh).ino))

    def _drop(self, node: Node | None) -> None:
        """The kernel no longer refers to *node*: let the stack free it (bounded memory)."""
        if node is not None:
            self.stack.forget(node)

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.dirs.get(fh)  # namespace changes reach the host as they happen

    # -- extended attributes ---------------------------------------------------------------
    @_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.stack.getxattr_node(self.inodes.node(inode), os.fsdecode(name))

    @_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self.inodes.node(inode)
        await self._in_thread(self.stack.setxattr_node, node, os.fsdecode(name), value)

    @_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        names = self.stack.listxattr_node(self.inodes.node(inode))
        return [os.fsencode(name) for name in names]

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.node(inode)
        await self._in_thread(self.stack.removexattr_node, node, os.fsdecode(name))

    # -- filesystem ------------------------------------------------------------------------
    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statvfs_data(self.stack.statfs())

    @_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only called without default_permissions, which this mount always sets; answer
        # from the mode bits anyway so the handler is never wrong.
        st = self.stack.getattr(self.inodes.node(inode))
        return _may_access(st, mode, ctx.uid, {ctx.gid} | pyfuse3.get_sup_groups(ctx.pid))


def _created(stack: Stack, fn: Callable[..., Node], *args: Any, **kwargs: Any) -> tuple[Node, Stat]:
    """Run a creating stack call and take the new node's attributes in the same thread."""
    node = fn(*args, **kwargs)
    return node, stack.getattr(node)


def _create(
    stack: Stack, parent: Node, name: str, flags: int, mode: int, uid: int, gid: int
) -> tuple[Node, FileHandle, Stat]:
    node, handle = stack.create(parent, name, flags, mode, uid=uid, gid=gid)
    return node, handle, handle.stat()


def _write_all(handle: FileHandle, data: bytes, offset: int) -> int:
    """Write all of *data*: without direct_io the kernel expects every byte to be taken."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += handle.write(bytes(view[done:]), offset + done)
    return done


def _setattr_changes(
    attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
) -> dict[str, int]:
    """The ``Stack.setattr`` keywords for the fields the kernel asked to change.

    pyfuse3 has already resolved UTIME_NOW into the current time and leaves UTIME_OMIT fields
    unflagged, so "flagged" means "set to this value".
    """
    changes: dict[str, int] = {}
    if fields.update_mode:
        changes["mode"] = stat.S_IMODE(attr.st_mode)
    if fields.update_uid:
        changes["uid"] = attr.st_uid
    if fields.update_gid:
        changes["gid"] = attr.st_gid
    if fields.update_size:
        changes["size"] = attr.st_size
    if fields.update_atime:
        changes["atime_ns"] = attr.st_atime_ns
    if fields.update_mtime:
        changes["mtime_ns"] = attr.st_mtime_ns
    return changes


def _apply_setattr(
    stack: Stack, node: Node, handle: FileHandle | None, changes: dict[str, int]
) -> Stat:
    """ftruncate through the open handle when there is one (its name may be gone)."""
    if handle is not None and "size" in changes:
        handle.truncate(changes.pop("size"))
        if not changes:
            return handle.stat()
    return stack.setattr(node, **changes)


def _may_access(st: Stat, mode: int, uid: int, groups: set[int]) -> bool:
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
