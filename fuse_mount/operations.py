"""The pyfuse3 backend's handlers: decode pyfuse3's arguments, call the request layer, convert.

A thin adapter over :class:`fuse_mount.requests.Requests`, which both backends share: this
module only converts between pyfuse3's types and the request layer's, decides what runs in a
worker thread, and raises ``FUSEError`` at its one boundary (:func:`_boundary`).

Cheap metadata requests (lookup, getattr, readdir, xattr reads) and reads and writes of open
files run inline in the trio loop; anything that may copy up runs in a worker thread under a
capacity limiter, so a large copy-up never stalls the other requests.
"""

from __future__ import annotations

import functools
import logging
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FUSEError

import layerfs
from fuse_mount.attrs import Timeouts
from fuse_mount.idmap import IdMap
from fuse_mount.requests import Attr, Caller, Changes, Entry, Opened, Requests, describe, errno_of

if TYPE_CHECKING:
    from layerfs import Stack
    from layerfs.types import Stat, StatFs

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_RENAME_FLAGS = {
    0: 0,
    int(pyfuse3.RENAME_NOREPLACE): layerfs.RENAME_NOREPLACE,
    int(pyfuse3.RENAME_EXCHANGE): layerfs.RENAME_EXCHANGE,
}


def _boundary(
    handler: Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]]:
    """The one place errors become ``FUSEError`` (:func:`~fuse_mount.requests.errno_of`).

    With debug logging on, every request and its outcome is logged as well.
    """
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("-> %s%r", name, args)
        try:
            result = await handler(self, *args, **kwargs)
        except Exception as exc:
            raise FUSEError(errno_of(exc, f"{name}{args!r}")) from None
        if debug:
            log.debug("<- %s: %s", name, _describe(result))
        return result

    return wrapper


def _describe(result: object) -> str:
    if isinstance(result, pyfuse3.EntryAttributes):
        return f"ino={result.st_ino} mode={result.st_mode:o} size={result.st_size}"
    if isinstance(result, pyfuse3.FileInfo):
        return f"fh={result.fh} keep_cache={result.keep_cache}"
    if isinstance(result, tuple):
        return ", ".join(_describe(item) for item in result)
    return describe(result)


def _caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.pid)


class Operations(pyfuse3.Operations):
    """A :class:`layerfs.Stack` served to the kernel through pyfuse3."""

    # The kernel must not send "." and ".." lookups (NFS export support is not offered).
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        stack: Stack,
        *,
        timeouts: Timeouts,
        threads: int,
        idmap: IdMap | None = None,
        acl: bool = True,
    ) -> None:
        super().__init__()
        # The kernel checks POSIX ACLs (FUSE_POSIX_ACL). pyfuse3 cannot also ask for the mode
        # before the umask, so a default ACL is not inherited here (semantics, difference 15).
        self.enable_acl = acl
        self.requests = Requests(stack, timeouts, idmap)
        self.requests.invalidate = _invalidate_attributes
        self._limiter = trio.CapacityLimiter(threads)

    async def _in_thread(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call (data I/O, anything that may copy up) off the loop."""
        call = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    def init(self) -> None:
        log.debug("FUSE session initialised")

    def shutdown(self) -> None:
        self.requests.shutdown()

    # -- names -----------------------------------------------------------------------------
    @_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return entry_attributes(self.requests.lookup(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.requests.forget(inode_list)

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return attr_attributes(self.requests.getattr(inode))

    @_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes = _setattr_changes(attr, fields)
        return attr_attributes(await self._in_thread(self.requests.setattr, inode, changes, fh))

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.requests.readlink(inode)

    @_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        run = self.requests.mknod
        return entry_attributes(
            await self._in_thread(run, parent_inode, name, mode, rdev, _caller(ctx))
        )

    @_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        run = self.requests.mkdir
        return entry_attributes(await self._in_thread(run, parent_inode, name, mode, _caller(ctx)))

    @_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        run = self.requests.symlink
        return entry_attributes(
            await self._in_thread(run, parent_inode, name, target, _caller(ctx))
        )

    @_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        run = self.requests.link
        return entry_attributes(await self._in_thread(run, inode, new_parent_inode, new_name))

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._in_thread(self.requests.unlink, parent_inode, name)

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._in_thread(self.requests.rmdir, parent_inode, name)

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
        await self._in_thread(
            self.requests.rename,
            parent_inode_old,
            name_old,
            parent_inode_new,
            name_new,
            _RENAME_FLAGS.get(flags, -1),
        )

    # -- files -----------------------------------------------------------------------------
    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if Requests.open_may_copy_up(flags):
            return _file_info(await self._in_thread(self.requests.open, inode, flags))
        return _file_info(self.requests.open(inode, flags))  # one open(2): inline

    @_boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        run = self.requests.create
        opened, entry = await self._in_thread(run, parent_inode, name, flags, mode, _caller(ctx))
        return _file_info(opened), entry_attributes(entry)

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # Inline: a pread of at most max_read bytes; a thread hop would cost more than it
        # saves, and the kernel's readahead keeps cold sequential reads streaming. Content a
        # layer fetches first (a partial layer) is read in a thread.
        if self.requests.read_may_block(fh):
            return await self._in_thread(self.requests.read, fh, off, size)
        return self.requests.read(fh, off, size)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.requests.write(fh, off, buf)  # into the page cache: inline

    @_boundary
    async def flush(self, fh: int) -> None:
        """Nothing is buffered here (data goes straight to the host file), so tell the kernel
        once, with ENOSYS, to stop sending FLUSH at every close: one request less per file."""
        raise OSError(38, "flush is not needed")  # ENOSYS

    @_boundary
    async def release(self, fh: int) -> None:
        self.requests.release(fh)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._in_thread(self.requests.fsync, fh, datasync)

    # -- directories -----------------------------------------------------------------------
    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.requests.opendir(inode)

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        def emit(name: bytes, entry: Entry, next_offset: int) -> bool:
            return bool(pyfuse3.readdir_reply(token, name, entry_attributes(entry), next_offset))

        self.requests.readdir(fh, start_id, emit, plus=True)

    @_boundary
    async def releasedir(self, fh: int) -> None:
        self.requests.releasedir(fh)

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.requests.fsyncdir(fh)

    # -- extended attributes ---------------------------------------------------------------
    @_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.requests.getxattr(inode, name)

    @_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._in_thread(self.requests.setxattr, inode, name, value)

    @_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.requests.listxattr(inode)

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._in_thread(self.requests.removexattr, inode, name)

    # -- filesystem ------------------------------------------------------------------------
    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statvfs_data(self.requests.statfs())

    @_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        groups = set(pyfuse3.get_sup_groups(ctx.pid))
        return self.requests.access(inode, mode, _caller(ctx), groups)


def _invalidate_attributes(ino: int) -> None:
    """Drop the kernel's cached attributes of *ino* (no data pages, no dentries)."""
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError as exc:
        log.debug("invalidate_inode(%d): %s", ino, exc)


def _file_info(opened: Opened) -> pyfuse3.FileInfo:
    return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache)


def _fill(attr: pyfuse3.EntryAttributes, st: Stat) -> pyfuse3.EntryAttributes:
    """The stack's ``st_ino`` is the kernel inode number."""
    attr.st_ino = st.ino
    attr.generation = 0
    attr.st_mode = st.mode
    attr.st_nlink = st.nlink
    attr.st_uid = st.uid
    attr.st_gid = st.gid
    attr.st_rdev = st.rdev
    attr.st_size = st.size
    attr.st_blksize = st.blksize
    attr.st_blocks = st.blocks
    attr.st_atime_ns = st.atime_ns
    attr.st_mtime_ns = st.mtime_ns
    attr.st_ctime_ns = st.ctime_ns
    return attr


def entry_attributes(entry: Entry) -> pyfuse3.EntryAttributes:
    """A fresh ``EntryAttributes`` per reply: pyfuse3 reads it after the handler returns and
    handlers run concurrently. A negative entry (inode 0) lets the kernel cache "no such name",
    which is safe because every name is created through this mount."""
    attr = pyfuse3.EntryAttributes()
    attr.entry_timeout = entry.entry_timeout
    attr.attr_timeout = entry.attr_timeout
    if entry.st is None:
        attr.st_ino = 0
        return attr
    return _fill(attr, entry.st)


def attr_attributes(reply: Attr) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.attr_timeout = reply.timeout
    return _fill(attr, reply.st)


def statvfs_data(st: StatFs) -> pyfuse3.StatvfsData:
    data = pyfuse3.StatvfsData()
    data.f_bsize = st.bsize
    data.f_frsize = st.frsize
    data.f_blocks = st.blocks
    data.f_bfree = st.bfree
    data.f_bavail = st.bavail
    data.f_files = st.files
    data.f_ffree = st.ffree
    data.f_favail = st.favail
    data.f_namemax = st.namemax
    return data


def _setattr_changes(attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> Changes:
    """pyfuse3 has already resolved UTIME_NOW into the current time and leaves UTIME_OMIT
    fields unflagged, so "flagged" means "set to this value"."""
    return Changes(
        mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
        uid=attr.st_uid if fields.update_uid else None,
        gid=attr.st_gid if fields.update_gid else None,
        size=attr.st_size if fields.update_size else None,
        atime_ns=attr.st_atime_ns if fields.update_atime else None,
        mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
    )
