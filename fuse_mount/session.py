"""The native backend's session: mount, negotiate INIT, read requests, reply, unmount.

Concurrency: one loop in the main thread reads ``/dev/fuse`` into a preallocated buffer and
serves every short request inline (lookups, getattr, listings, reads and writes of open
files, xattr reads): each takes a few microseconds of Python, less than a thread hand-off
would cost, and Python's GIL would serialise them anyway. Requests that may take long (a
copy-up, creating, removing, renaming, fsync, a read of a file whose layer may fetch its
content first) go to a pool of ``threads`` worker threads,
which write their replies themselves (each reply is one ``write`` to the device, so replies
from several threads never interleave). With passthrough, file data never reaches the
daemon at all.

Between requests the loop polls the device for up to ``busy_poll`` microseconds before it
blocks, like the pyfuse3 backend's loop (:mod:`fuse_mount.loop` explains why: a sleeping
daemon must be woken for the next request).

Stopping: SIGTERM or SIGINT detaches the mount and ends the loop (at once while it waits for
a request, after the current request otherwise); an unmount from outside ends it with
``ENODEV``. Closing the device then aborts whatever the kernel still had pending.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fuse_mount import kernel_mount, wire
from fuse_mount.mount import MountFailedError
from fuse_mount.native import (
    HANDLERS,
    NO_REPLY,
    Handlers,
    Passthrough,
    Payload,
    Request,
    describe_call,
    open_may_block,
    read_may_block,
)
from fuse_mount.requests import Requests, describe, errno_of
from layerfs import privilege

if TYPE_CHECKING:
    from fuse_mount.options import MountOptions
    from layerfs import Stack

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_WRITE = 1 << 20  # bytes: 1 MiB requests
MAX_PAGES = MAX_WRITE // 4096
BUFFER_SIZE = MAX_WRITE + 4096  # a WRITE request's header and body fit
SMALL_REPLY = 4096  # bytes: replies up to this size are sent with one copy and one write
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48
PASSTHROUGH_STACK_DEPTH = 1  # backing files on an ordinary filesystem (not a stacked one)
BoundHandler = Callable[[Request, bytes], Payload]
_request = Request._make


class _Stop(BaseException):
    """Raised by the stop-signal handler while the loop waits for the next request."""


class Session:
    """One mounted FUSE connection served by this process (see the module docstring)."""

    def __init__(self, stack: Stack, mountpoint: Path, options: MountOptions) -> None:
        self.mountpoint = mountpoint
        self.options = options
        self.requests = Requests(stack, options.timeouts, options.idmap)
        self.handlers = Handlers(self.requests)
        # opcode -> (handler bound to this session's Handlers, may block)
        self._table: dict[int, tuple[BoundHandler, bool]] = {
            op: (handler.__get__(self.handlers), slow) for op, (handler, slow) in HANDLERS.items()
        }
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.mounted: kernel_mount.KernelMount | None = None
        self.fd = -1
        self.proto_minor = 0
        self._buffer = bytearray(BUFFER_SIZE)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.threads, thread_name_prefix="layerfs-io"
        )
        self._stopping = False
        self._waiting = False
        self.served = 0
        self.caught = 0

    # -- life ------------------------------------------------------------------------------
    def mount(self) -> None:
        self.mounted = kernel_mount.mount(self.mountpoint, self.options.fuse_options)
        self.fd = self.mounted.fd

    def run(self, on_ready: Callable[[], None]) -> None:
        """Serve until unmounted or stopped; unmount and release everything at the end."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self._negotiate()
            self.requests.invalidate = self._notify_inval_inode
            self._debug = log.isEnabledFor(logging.DEBUG)
            on_ready()
            self._loop()
        except _Stop:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._finish()

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("got %s, unmounting", signal.Signals(signum).name)
        self._stopping = True
        if self.mounted is not None:
            kernel_mount.unmount(self.mounted)
        if self._waiting:
            raise _Stop

    def _finish(self) -> None:
        self._pool.shutdown(wait=True)
        if self.mounted is not None:
            kernel_mount.unmount(self.mounted)  # after a signal, a crash or an outside unmount
            kernel_mount.close(self.mounted)
            self.mounted = None
        self.requests.shutdown()
        if self.options.busy_poll_us:
            log.info("busy-poll: %d of %d requests read without sleeping", self.caught, self.served)

    # -- INIT ------------------------------------------------------------------------------
    def _negotiate(self) -> None:
        """Answer the kernel's INIT: the protocol version and what this session uses."""
        while True:
            n = self._read()
            header = wire.IN_HEADER.unpack_from(self._buffer)
            opcode, unique = header[1], header[2]
            if opcode != wire.Op.INIT:
                self._reply_error(unique, errno.EIO)
                continue
            major, minor, max_readahead, flags = wire.INIT_IN.unpack_from(self._buffer, 40)
            if major > wire.KERNEL_MAJOR:  # the kernel asks again with our major
                self._send(unique, 0, wire.INIT_OUT.pack(wire.KERNEL_MAJOR, *(0,) * 11))
                continue
            if major < wire.KERNEL_MAJOR or minor < wire.OLDEST_MINOR:
                self._reply_error(unique, errno.EPROTO)
                raise MountFailedError(
                    f"the kernel speaks FUSE {major}.{minor}; layerfs's native backend needs "
                    f"{wire.KERNEL_MAJOR}.{wire.OLDEST_MINOR} or newer (use -o backend=pyfuse3)"
                )
            if flags & wire.INIT_EXT and n >= 40 + wire.INIT_IN.size + 4:
                (flags2,) = wire.INIT_IN_FLAGS2.unpack_from(self._buffer, 40 + wire.INIT_IN.size)
                flags |= flags2 << 32
            self._send(unique, 0, self._init_out(minor, max_readahead, flags))
            return

    def _init_out(self, minor: int, max_readahead: int, offered: int) -> bytes:
        self.proto_minor = min(minor, wire.KERNEL_MINOR)
        want = (
            wire.ASYNC_READ
            | wire.ATOMIC_O_TRUNC
            | wire.BIG_WRITES
            | wire.AUTO_INVAL_DATA
            | wire.DO_READDIRPLUS
            | wire.READDIRPLUS_AUTO
            | wire.PARALLEL_DIROPS
            | wire.ABORT_ERROR
            | wire.MAX_PAGES
            | wire.CACHE_SYMLINKS
            | wire.SETXATTR_EXT
            | wire.NO_EXPORT_SUPPORT
            | wire.INIT_EXT
        )
        if self.options.acl:  # the kernel checks ACLs; the umask or a default ACL is ours
            want |= wire.POSIX_ACL | wire.DONT_MASK
        # backing files need CAP_SYS_ADMIN on the host, which uid 0 of a user namespace lacks
        mounted_as_root = self.mounted is not None and self.mounted.privileged
        if self.options.passthrough and mounted_as_root and privilege.is_privileged():
            want |= wire.PASSTHROUGH
        flags = want & offered
        self.handlers.setxattr_ext = bool(flags & wire.SETXATTR_EXT)
        self.handlers.dont_mask = bool(flags & wire.DONT_MASK)
        depth = 0
        if flags & wire.PASSTHROUGH:
            self.handlers.passthrough = Passthrough(self.fd)
            depth = PASSTHROUGH_STACK_DEPTH
        log.info(
            "FUSE %d.%d, passthrough %s",
            wire.KERNEL_MAJOR,
            self.proto_minor,
            "on" if depth else "off",
        )
        return wire.INIT_OUT.pack(
            wire.KERNEL_MAJOR,
            self.proto_minor,
            max_readahead,
            flags & 0xFFFFFFFF,
            MAX_BACKGROUND,
            CONGESTION_THRESHOLD,
            MAX_WRITE,
            1,  # time_gran: nanoseconds
            MAX_PAGES,
            0,
            flags >> 32,
            depth,
        )

    # -- the loop --------------------------------------------------------------------------
    def _read(self) -> int:
        """Read one request into the buffer; its length. Raises OSError(ENODEV) at the end."""
        self._waiting = True
        try:
            if self._stopping:
                raise _Stop
            return os.readv(self.fd, [self._buffer])  # blocking: INIT only
        finally:
            self._waiting = False

    def _loop(self) -> None:
        """Read and serve requests until the session ends.

        The device is non-blocking here: a read that finds a request waiting costs one
        system call; only when none is waiting does the loop spin (``busy_poll``) and then
        sleep in ``poll``.
        """
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        window_ns = self.options.busy_poll_us * 1000
        view = memoryview(self._buffer)
        iov = [self._buffer]
        fd = self.fd
        dispatch = self._dispatch
        os.set_blocking(fd, False)
        while not self._stopping:
            try:
                n = os.readv(fd, iov)
            except BlockingIOError:
                if window_ns and _spin(poll, window_ns):
                    self.caught += 1
                else:
                    self._wait(poll)
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted: read the next
                    continue
                if exc.errno in (errno.ENODEV, errno.ECONNABORTED):
                    return  # unmounted
                raise
            self.served += 1
            if dispatch(view, n):
                return

    def _wait(self, poll: select.poll) -> None:
        """Sleep until a request is waiting (a stop signal interrupts the sleep)."""
        self._waiting = True
        try:
            if self._stopping:
                raise _Stop
            poll.poll()
        finally:
            self._waiting = False

    def _dispatch(self, view: memoryview, n: int) -> bool:
        """Serve one request (or hand it to a worker); True when the session is over."""
        req = _request(wire.IN_HEADER.unpack_from(view))
        body = view[wire.IN_HEADER.size : n].tobytes()
        entry = self._table.get(req.opcode)
        if entry is None:
            if req.opcode == wire.Op.DESTROY:
                self._send(req.unique, 0, b"")
                return True
            self._reply_error(req.unique, errno.ENOSYS)
            return False
        handler, slow = entry
        if (
            slow
            or (req.opcode == wire.Op.OPEN and open_may_block(body))
            or (req.opcode == wire.Op.READ and read_may_block(self.requests, body))
        ):
            self._pool.submit(self._serve, handler, req, body)
        elif self._debug:
            self._serve(handler, req, body)
        else:  # _serve without the debug log, inline: the path of nearly every request
            try:
                payload = handler(req, body)
            except Exception as exc:
                self._reply_error(req.unique, errno_of(exc, describe_call(req)))
                return False
            if payload is not NO_REPLY:
                self._reply(req.unique, payload)
        return False

    def _serve(self, handler: BoundHandler, req: Request, body: bytes) -> None:
        """Run one handler and send its reply; the one place errors become error replies."""
        debug = self._debug
        if debug:
            log.debug("-> %s", describe_call(req))
        try:
            payload = handler(req, body)
        except Exception as exc:
            self._reply_error(req.unique, errno_of(exc, describe_call(req)))
            return
        if payload is NO_REPLY:
            return
        if debug:
            log.debug("<- %s: %s", describe_call(req), describe(payload))
        self._reply(req.unique, payload)

    # -- replies and notifications ---------------------------------------------------------
    def _reply(self, unique: int, payload: Payload) -> None:
        """Send a successful reply: one ``write`` of header and payload when it is small (the
        copy costs less than building an I/O vector), ``writev`` otherwise."""
        assert payload is not None
        try:
            if isinstance(payload, list):
                size = wire.OUT_HEADER.size + sum(map(len, payload))
                os.writev(self.fd, [wire.OUT_HEADER.pack(size, 0, unique), *payload])
            elif len(payload) <= SMALL_REPLY:
                header = wire.OUT_HEADER.pack(wire.OUT_HEADER.size + len(payload), 0, unique)
                os.write(self.fd, header + payload)
            else:
                header = wire.OUT_HEADER.pack(wire.OUT_HEADER.size + len(payload), 0, unique)
                os.writev(self.fd, [header, payload])
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted meanwhile
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.ECONNABORTED):
                raise

    def _send(self, unique: int, error: int, payload: Payload) -> None:
        parts = payload if isinstance(payload, list) else [payload] if payload else []
        size = wire.OUT_HEADER.size + sum(len(p) for p in parts)
        try:
            os.writev(self.fd, [wire.OUT_HEADER.pack(size, error, unique), *parts])
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted meanwhile
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.ECONNABORTED):
                raise

    def _reply_error(self, unique: int, code: int) -> None:
        self._send(unique, -code, b"")

    def _notify_inval_inode(self, ino: int) -> None:
        """Drop the kernel's cached attributes of *ino* (offset -1: no data pages)."""
        payload = wire.NOTIFY_INVAL_INODE_OUT.pack(ino, -1, 0)
        try:
            self._send(0, wire.Notify.INVAL_INODE, payload)
        except OSError as exc:
            log.debug("inval_inode(%d): %s", ino, exc)


def _spin(poll: select.poll, window_ns: int) -> bool:
    """Poll the device without sleeping for up to *window_ns*; True if a request arrived."""
    if poll.poll(0):
        return False  # already there: not counted as caught by the spin
    deadline = time.perf_counter_ns() + window_ns
    while not poll.poll(0):
        if time.perf_counter_ns() > deadline:
            return False
        os.sched_yield()  # a runnable process on this CPU (the caller, say) goes first
    return True


def serve(
    stack: Stack,
    mountpoint: Path,
    options: MountOptions,
    *,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount *stack* with the native backend and serve it (see :func:`fuse_mount.mount.serve`)."""
    session = Session(stack, mountpoint, options)
    session.mount()
    log.info("mounted %s (native)", mountpoint)
    session.run(on_ready)
    log.info("unmounted %s", mountpoint)
