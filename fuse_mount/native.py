"""The native backend's handlers: decode a request's body, call the request layer, encode.

One method per opcode, registered in :data:`HANDLERS` with whether it may block for long (a
copy-up, a creation, fsync: the session runs those in a worker thread). A handler returns the
reply's payload (``bytes`` or a list of buffers), or :data:`NO_REPLY`; it raises ``OSError`` or
``LayerfsError`` for an error reply, which the session turns into an errno at one boundary.
Struct layouts come from :mod:`fuse_mount.wire` only.

Passthrough (:class:`Passthrough`): a regular file opened through a mount with
``FUSE_PASSTHROUGH`` is given to the kernel as a *backing file* (``FUSE_DEV_IOC_BACKING_OPEN``),
and its reads, writes, splices and mmaps then go to the host file without this daemon. The
kernel allows one backing file per inode while any passthrough open of it exists, so the id is
shared by those opens; it stays registered after the last of them, for the next open
(:class:`Passthrough` says until when). The kernel refuses any other open of
an inode that has a passthrough open (another backing file, or none), so when a node was
copied up while an open still passes through to its lower file, the next open of it retires
that kernel inode (:meth:`fuse_mount.inodes.InodeTable.retire`) and answers ESTALE: the
kernel looks the name up again, gets a new inode for the node (same ``st_ino``) and repeats
the open there, passing through to the upper file. The old descriptor keeps reading the
lower file (docs/semantics.md).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import layerfs
from fuse_mount import wire
from fuse_mount.requests import Caller, Changes, Entry, Opened, Requests

if TYPE_CHECKING:
    from layerfs import FileHandle

log = logging.getLogger(__name__)

NO_REPLY = None
Payload = bytes | bytearray | memoryview | list[bytes | bytearray | memoryview] | None
Handler = Callable[["Handlers", "Request", bytes], Payload]

_RENAME_FLAGS = {
    0: 0,
    wire.RENAME_NOREPLACE: layerfs.RENAME_NOREPLACE,
    wire.RENAME_EXCHANGE: layerfs.RENAME_EXCHANGE,
}
_NOW = (1 << 30) - 1  # marks "the current time" among setattr fields
IDLE_LIMIT = 32768  # idle backing ids kept registered at most (each holds a host file open)


class Request(NamedTuple):
    """The decoded ``fuse_in_header`` of one request, field for field (a named tuple: one is
    made for every request, straight from the unpacked header)."""

    len: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    total_extlen: int
    padding: int

    def caller(self, umask: int | None = None) -> Caller:
        return Caller(self.uid, self.gid, self.pid, umask)


@dataclass(slots=True)
class _Backing:
    backing_id: int
    version: int
    opens: int = 1


class Passthrough:
    """Backing ids of the inodes with passthrough opens (see the module docstring).

    A backing id outlives the last open of its inode: it stays registered, *idle*, so that
    the next open of the inode passes through without registering the host file again (a
    program that reads a tree opens every file once per pass; registering and closing the
    backing file is two ``ioctl`` calls and a host ``open`` in each round trip). An idle id
    still holds its host file open in the kernel; it is closed when the kernel forgets the
    inode (:meth:`forget`), when it belongs to an earlier version of the node (a copy-up),
    or when more than :data:`IDLE_LIMIT` are idle (the oldest first).
    """

    STALE = -1  # attach(): the inode passes through to another host file (before a copy-up)

    def __init__(self, device_fd: int) -> None:
        self._device = device_fd
        self.disabled = False
        self._lock = threading.Lock()
        self._by_inode: dict[int, _Backing] = {}
        self._by_fh: dict[int, int] = {}
        self._idle: dict[int, None] = {}  # inodes whose backing has no open, oldest first
        self._cached: dict[int, int] = {}  # inode -> opens through the page cache
        self._cached_fh: dict[int, int] = {}

    def attach(self, ino: int, fh: int, handle: FileHandle) -> int | None:
        """The backing id for a new open *fh* of kernel inode *ino*; :data:`STALE` when the
        inode passes through to the host file of an earlier version of the node; None when
        passthrough is not possible (the open then uses the page cache as without it)."""
        version = handle.node.version
        with self._lock:
            backing = self._by_inode.get(ino)
            if backing is not None and backing.version != version:
                if backing.opens:
                    return self.STALE
                self._close(ino)  # idle, for the host file the node had before a copy-up
                backing = None
            if backing is not None:
                if not backing.opens:
                    del self._idle[ino]
                backing.opens += 1
                self._by_fh[fh] = ino
                return backing.backing_id
            if self.disabled:
                return None
            if not handle.has_fileno() or ino in self._cached:
                # A layer serves the content itself (a partial layer fetches it as it is
                # read): through the page cache, as every open of the inode until the last
                # of those is released, since the kernel mixes no modes on one inode.
                self._cached[ino] = self._cached.get(ino, 0) + 1
                self._cached_fh[fh] = ino
                return None
            try:
                # a mutable buffer: ioctl() then returns the call's result, the new id
                arg = bytearray(wire.BACKING_MAP.pack(handle.fileno(), 0, 0))
                backing_id = fcntl.ioctl(self._device, wire.DEV_IOC_BACKING_OPEN, arg, True)
            except OSError as exc:
                # e.g. layers on a stacking filesystem: the kernel refuses their files as
                # backing files. Mixing passthrough and cached opens of one inode is not
                # allowed, so passthrough stops for new inodes from here on.
                self.disabled = True
                log.warning("passthrough off from now on: %s", exc)
                return None
            self._by_inode[ino] = _Backing(int(backing_id), version)
            self._by_fh[fh] = ino
            return int(backing_id)

    def detach(self, fh: int) -> None:
        """Open *fh* was released: its inode's backing id becomes idle with its last open."""
        with self._lock:
            ino = self._by_fh.pop(fh, None)
            if ino is None:
                self._uncache(fh)
                return
            backing = self._by_inode[ino]
            backing.opens -= 1
            if backing.opens:
                return
            self._idle[ino] = None
            if len(self._idle) > IDLE_LIMIT:
                self._close(next(iter(self._idle)))

    def forget(self, inodes: Iterable[int]) -> None:
        """The kernel forgot *inodes*: close their idle backing ids (never raises)."""
        with self._lock:
            for ino in inodes:
                if ino in self._idle:
                    self._close(ino)

    def _uncache(self, fh: int) -> None:
        ino = self._cached_fh.pop(fh, None)
        if ino is not None:
            self._cached[ino] -= 1
            if not self._cached[ino]:
                del self._cached[ino]

    def in_use(self) -> int:
        """Backing ids registered, idle or not."""
        with self._lock:
            return len(self._by_inode)

    def _close(self, ino: int) -> None:
        """Close the backing id of *ino*, which has no open (with the lock held)."""
        backing = self._by_inode.pop(ino)
        self._idle.pop(ino, None)
        try:
            fcntl.ioctl(
                self._device, wire.DEV_IOC_BACKING_CLOSE, wire.BACKING_ID.pack(backing.backing_id)
            )
        except OSError as exc:
            log.debug("closing backing id %d: %s", backing.backing_id, exc)


class Handlers:
    """The opcode handlers of one session; see the module docstring."""

    def __init__(self, requests: Requests) -> None:
        self.requests = requests
        self.passthrough: Passthrough | None = None
        self.setxattr_ext = False
        self.dont_mask = False  # modes arrive before the umask, which comes beside them

    # -- names -----------------------------------------------------------------------------
    def lookup(self, req: Request, body: bytes) -> Payload:
        name, _ = wire.cstring(body)
        return _entry(self.requests.lookup(req.nodeid, name))

    def forget(self, req: Request, body: bytes) -> Payload:
        (count,) = wire.FORGET_IN.unpack_from(body)
        self._forget([(req.nodeid, count)])
        return NO_REPLY

    def batch_forget(self, req: Request, body: bytes) -> Payload:
        count, _ = wire.BATCH_FORGET_IN.unpack_from(body)
        size, start = wire.FORGET_ONE.size, wire.BATCH_FORGET_IN.size
        items = [wire.FORGET_ONE.unpack_from(body, start + i * size) for i in range(count)]
        self._forget(items)
        return NO_REPLY

    def _forget(self, items: list[tuple[int, int]]) -> None:
        self.requests.forget(items)
        if self.passthrough is not None:
            inodes = self.requests.inodes
            self.passthrough.forget(ino for ino, _ in items if not inodes.holds(ino))

    def getattr(self, req: Request, body: bytes) -> Payload:
        flags, _, fh = wire.GETATTR_IN.unpack_from(body)
        reply = self.requests.getattr(req.nodeid, fh if flags & wire.GETATTR_FH else None)
        return wire.attr_out(reply.st, reply.timeout)

    def setattr(self, req: Request, body: bytes) -> Payload:
        f = wire.SETATTR_IN.unpack_from(body)
        valid, fh, size, atime, mtime, atime_ns, mtime_ns = f[0], f[2], f[3], f[5], f[6], f[8], f[9]
        mode, uid, gid = f[11], f[13], f[14]
        changes = Changes(
            mode=stat.S_IMODE(mode) if valid & wire.FATTR_MODE else None,
            uid=uid if valid & wire.FATTR_UID else None,
            gid=gid if valid & wire.FATTR_GID else None,
            size=size if valid & wire.FATTR_SIZE else None,
            atime_ns=_time(valid, wire.FATTR_ATIME, wire.FATTR_ATIME_NOW, atime, atime_ns),
            mtime_ns=_time(valid, wire.FATTR_MTIME, wire.FATTR_MTIME_NOW, mtime, mtime_ns),
        )
        reply = self.requests.setattr(req.nodeid, changes, fh if valid & wire.FATTR_FH else None)
        return wire.attr_out(reply.st, reply.timeout)

    def readlink(self, req: Request, body: bytes) -> Payload:
        return self.requests.readlink(req.nodeid)

    def mknod(self, req: Request, body: bytes) -> Payload:
        mode, rdev, umask, _ = wire.MKNOD_IN.unpack_from(body)
        name, _ = wire.cstring(body, wire.MKNOD_IN.size)
        caller = req.caller(umask if self.dont_mask else None)
        return _entry(self.requests.mknod(req.nodeid, name, mode, rdev, caller))

    def mkdir(self, req: Request, body: bytes) -> Payload:
        mode, umask = wire.MKDIR_IN.unpack_from(body)
        name, _ = wire.cstring(body, wire.MKDIR_IN.size)
        caller = req.caller(umask if self.dont_mask else None)
        return _entry(self.requests.mkdir(req.nodeid, name, mode, caller))

    def symlink(self, req: Request, body: bytes) -> Payload:
        name, end = wire.cstring(body)
        target, _ = wire.cstring(body, end)
        return _entry(self.requests.symlink(req.nodeid, name, target, req.caller()))

    def link(self, req: Request, body: bytes) -> Payload:
        (old,) = wire.LINK_IN.unpack_from(body)
        name, _ = wire.cstring(body, wire.LINK_IN.size)
        return _entry(self.requests.link(old, req.nodeid, name))

    def unlink(self, req: Request, body: bytes) -> Payload:
        self.requests.unlink(req.nodeid, wire.cstring(body)[0])
        return b""

    def rmdir(self, req: Request, body: bytes) -> Payload:
        self.requests.rmdir(req.nodeid, wire.cstring(body)[0])
        return b""

    def rename(self, req: Request, body: bytes) -> Payload:
        (newdir,) = wire.RENAME_IN.unpack_from(body)
        return self._rename(req, body, newdir, 0, wire.RENAME_IN.size)

    def rename2(self, req: Request, body: bytes) -> Payload:
        newdir, flags, _ = wire.RENAME2_IN.unpack_from(body)
        return self._rename(req, body, newdir, flags, wire.RENAME2_IN.size)

    def _rename(self, req: Request, body: bytes, newdir: int, flags: int, at: int) -> Payload:
        old, end = wire.cstring(body, at)
        new, _ = wire.cstring(body, end)
        self.requests.rename(req.nodeid, old, newdir, new, _RENAME_FLAGS.get(flags, -1))
        return b""

    # -- files -----------------------------------------------------------------------------
    def open(self, req: Request, body: bytes) -> Payload:
        flags, _ = wire.OPEN_IN.unpack_from(body)
        return self._open_out(self.requests.open(req.nodeid, flags))

    def create(self, req: Request, body: bytes) -> Payload:
        flags, mode, umask, _ = wire.CREATE_IN.unpack_from(body)
        name, _ = wire.cstring(body, wire.CREATE_IN.size)
        caller = req.caller(umask if self.dont_mask else None)
        opened, entry = self.requests.create(req.nodeid, name, flags, mode, caller)
        return [_entry(entry), self._open_out(opened)]

    def _open_out(self, opened: Opened) -> bytes:
        """Passthrough when the mount has it, else keep the page cache of lower-only data."""
        if self.passthrough is None:
            flags = wire.FOPEN_KEEP_CACHE if opened.keep_cache else 0
            return wire.OPEN_OUT.pack(opened.fh, flags | wire.FOPEN_NOFLUSH, 0)
        backing = self.passthrough.attach(opened.nodeid, opened.fh, opened.handle)
        if backing is Passthrough.STALE:
            # The kernel inode still passes through to the host file this node had before a
            # copy-up, and allows no other for now: the node gets a new kernel inode, and
            # ESTALE makes the kernel look the name up again and repeat the open on it.
            self.requests.release(opened.fh)
            self.requests.inodes.retire(opened.nodeid)
            raise OSError(errno.ESTALE, "copied up while open: look it up again")
        if backing is None:
            flags = wire.FOPEN_KEEP_CACHE if opened.keep_cache else 0
            return wire.OPEN_OUT.pack(opened.fh, flags | wire.FOPEN_NOFLUSH, 0)
        return wire.OPEN_OUT.pack(opened.fh, wire.FOPEN_PASSTHROUGH | wire.FOPEN_NOFLUSH, backing)

    def read(self, req: Request, body: bytes) -> Payload:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(body)
        return self.requests.read(fh, offset, size)

    def write(self, req: Request, body: bytes) -> Payload:
        fh, offset, size, *_ = wire.WRITE_IN.unpack_from(body)
        start = wire.WRITE_IN.size
        done = self.requests.write(fh, offset, body[start : start + size])
        return wire.WRITE_OUT.pack(done, 0)

    def release(self, req: Request, body: bytes) -> Payload:
        fh, *_ = wire.RELEASE_IN.unpack_from(body)
        if self.passthrough is not None:
            self.passthrough.detach(fh)
        self.requests.release(fh)
        return b""

    def fsync(self, req: Request, body: bytes) -> Payload:
        fh, flags, _ = wire.FSYNC_IN.unpack_from(body)
        self.requests.fsync(fh, bool(flags & wire.FSYNC_FDATASYNC))
        return b""

    def fallocate(self, req: Request, body: bytes) -> Payload:
        fh, offset, length, mode, _ = wire.FALLOCATE_IN.unpack_from(body)
        self.requests.fallocate(fh, mode, offset, length)
        return b""

    # -- directories -----------------------------------------------------------------------
    def opendir(self, req: Request, body: bytes) -> Payload:
        """Directory listings are cached by the kernel across opens: every change goes
        through this mount (which resets the cache) and a change made in the upper directory
        from outside shows in its mtime once the attribute timeout has passed."""
        fh = self.requests.opendir(req.nodeid)
        return wire.OPEN_OUT.pack(fh, wire.FOPEN_CACHE_DIR | wire.FOPEN_KEEP_CACHE, 0)

    def readdir(self, req: Request, body: bytes) -> Payload:
        return self._readdir(body, plus=False)

    def readdirplus(self, req: Request, body: bytes) -> Payload:
        return self._readdir(body, plus=True)

    def _readdir(self, body: bytes, plus: bool) -> Payload:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(body)
        out = bytearray()
        head = wire.DIRENT.size + (wire.ENTRY_OUT.size if plus else 0)
        entry_out, dirent, pads = wire.entry_out, wire.DIRENT.pack, wire.DIRENT_PADDING

        def emit(name: bytes, entry: Entry, next_offset: int) -> bool:
            st = entry.st
            assert st is not None
            namelen = len(name)
            padded = (namelen + 7) & ~7  # names are padded to 8 bytes
            if len(out) + head + padded > size:
                return False
            if plus:
                out.extend(entry_out(entry.nodeid, st, entry.entry_timeout, entry.attr_timeout))
            out.extend(dirent(st.ino, next_offset, namelen, (st.mode >> 12) & 0o17))
            out.extend(name)
            out.extend(pads[padded - namelen])
            return True

        self.requests.readdir(fh, offset, emit, plus)
        return out

    def releasedir(self, req: Request, body: bytes) -> Payload:
        fh, *_ = wire.RELEASE_IN.unpack_from(body)
        self.requests.releasedir(fh)
        return b""

    def fsyncdir(self, req: Request, body: bytes) -> Payload:
        fh, _, _ = wire.FSYNC_IN.unpack_from(body)
        self.requests.fsyncdir(fh)
        return b""

    # -- extended attributes ---------------------------------------------------------------
    def setxattr(self, req: Request, body: bytes) -> Payload:
        head = wire.SETXATTR_IN if self.setxattr_ext else wire.SETXATTR_IN_COMPAT
        size, flags = head.unpack_from(body)[:2]
        name, end = wire.cstring(body, head.size)
        self.requests.setxattr(req.nodeid, name, bytes(body[end : end + size]), flags)
        return b""

    def getxattr(self, req: Request, body: bytes) -> Payload:
        size, _ = wire.GETXATTR_IN.unpack_from(body)
        name, _ = wire.cstring(body, wire.GETXATTR_IN.size)
        return _sized(self.requests.getxattr(req.nodeid, name), size)

    def listxattr(self, req: Request, body: bytes) -> Payload:
        size, _ = wire.GETXATTR_IN.unpack_from(body)
        names = self.requests.listxattr(req.nodeid)
        return _sized(b"".join(name + b"\0" for name in names), size)

    def removexattr(self, req: Request, body: bytes) -> Payload:
        self.requests.removexattr(req.nodeid, wire.cstring(body)[0])
        return b""

    # -- filesystem ------------------------------------------------------------------------
    def statfs(self, req: Request, body: bytes) -> Payload:
        return wire.kstatfs(self.requests.statfs())

    def access(self, req: Request, body: bytes) -> Payload:
        mask, _ = wire.ACCESS_IN.unpack_from(body)
        if not self.requests.access(req.nodeid, mask, req.caller(), _groups(req.pid)):
            raise OSError(errno.EACCES, "access denied")
        return b""

    def flush(self, req: Request, body: bytes) -> Payload:
        """Nothing is buffered here; open replies carry FOPEN_NOFLUSH, and ENOSYS stops the
        kernel from sending FLUSH for files opened otherwise."""
        raise OSError(errno.ENOSYS, "flush is not needed")

    def interrupt(self, req: Request, body: bytes) -> Payload:
        """Requests are short or run to completion (a copy-up must not stop half-way)."""
        return NO_REPLY


def _entry(entry: Entry) -> bytes:
    return wire.entry_out(entry.nodeid, entry.st, entry.entry_timeout, entry.attr_timeout)


def _sized(data: bytes, size: int) -> bytes:
    """A getxattr/listxattr answer: the size alone when asked with size 0, ERANGE if short."""
    if size == 0:
        return wire.GETXATTR_OUT.pack(len(data), 0)
    if len(data) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return data


def _time(valid: int, bit: int, now_bit: int, sec: int, nsec: int) -> int | None:
    if not valid & bit:
        return None
    if valid & now_bit:
        return time.time_ns()
    return sec * 1_000_000_000 + nsec


def _groups(pid: int) -> set[int]:
    """The supplementary groups of process *pid* (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


# opcode -> (handler, may block for long)
HANDLERS: dict[int, tuple[Handler, bool]] = {
    wire.Op.LOOKUP: (Handlers.lookup, False),
    wire.Op.FORGET: (Handlers.forget, False),
    wire.Op.BATCH_FORGET: (Handlers.batch_forget, False),
    wire.Op.GETATTR: (Handlers.getattr, False),
    wire.Op.SETATTR: (Handlers.setattr, True),
    wire.Op.READLINK: (Handlers.readlink, False),
    wire.Op.SYMLINK: (Handlers.symlink, True),
    wire.Op.MKNOD: (Handlers.mknod, True),
    wire.Op.MKDIR: (Handlers.mkdir, True),
    wire.Op.UNLINK: (Handlers.unlink, True),
    wire.Op.RMDIR: (Handlers.rmdir, True),
    wire.Op.RENAME: (Handlers.rename, True),
    wire.Op.RENAME2: (Handlers.rename2, True),
    wire.Op.LINK: (Handlers.link, True),
    wire.Op.OPEN: (Handlers.open, False),  # the session moves copy-up opens to a thread
    wire.Op.CREATE: (Handlers.create, True),
    wire.Op.READ: (Handlers.read, False),
    wire.Op.WRITE: (Handlers.write, False),
    wire.Op.RELEASE: (Handlers.release, False),
    wire.Op.FSYNC: (Handlers.fsync, True),
    wire.Op.FALLOCATE: (Handlers.fallocate, True),
    wire.Op.FLUSH: (Handlers.flush, False),
    wire.Op.OPENDIR: (Handlers.opendir, False),
    wire.Op.READDIR: (Handlers.readdir, False),
    wire.Op.READDIRPLUS: (Handlers.readdirplus, False),
    wire.Op.RELEASEDIR: (Handlers.releasedir, False),
    wire.Op.FSYNCDIR: (Handlers.fsyncdir, False),
    wire.Op.SETXATTR: (Handlers.setxattr, True),
    wire.Op.GETXATTR: (Handlers.getxattr, False),
    wire.Op.LISTXATTR: (Handlers.listxattr, False),
    wire.Op.REMOVEXATTR: (Handlers.removexattr, True),
    wire.Op.STATFS: (Handlers.statfs, False),
    wire.Op.ACCESS: (Handlers.access, False),
    wire.Op.INTERRUPT: (Handlers.interrupt, False),
}


def read_may_block(requests: Requests, body: bytes) -> bool:
    """Whether a READ request may wait for content to be fetched (then it runs in a worker
    thread, and other requests go on meanwhile)."""
    fh, *_ = wire.READ_IN.unpack_from(body)
    return requests.read_may_block(fh)


def open_may_block(body: bytes) -> bool:
    """Whether an OPEN request may copy up (then it runs in a worker thread)."""
    flags, _ = wire.OPEN_IN.unpack_from(body)
    return Requests.open_may_copy_up(flags)


def opcode_name(opcode: int) -> str:
    try:
        return wire.Op(opcode).name.lower()
    except ValueError:
        return f"opcode {opcode}"


def describe_call(req: Request, extra: Any = "") -> str:
    return f"{opcode_name(req.opcode)}(node {req.nodeid}{extra})"
