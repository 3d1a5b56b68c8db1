"""The request loop: pyfuse3's session loop, with a busy-poll between close requests.

Serving one request is cheap next to what happens around it: when the daemon blocks for the
next request the kernel puts it to sleep, and the request that follows (the caller's next
``stat``, the next readahead chunk) has to wake it again, which on a virtual machine means an
inter-processor interrupt through the hypervisor. Measured here, those wake-ups were 40 % of
the daemon's CPU time during a fresh ``stat`` of 20,000 names and pyfuse3's own wait (a trio
lock and ``wait_readable``: two passes through trio's scheduler) added more.

So between requests the loop first polls ``/dev/fuse`` without blocking for up to
``busy_poll`` microseconds (mount option, default 200, 0 turns it off); a request that
arrives in that window is read without a sleep, a wake-up or trio. Only then does it wait the
way pyfuse3 does, so an idle daemon sleeps in trio's ``epoll`` as usual. The same trade as the
kernel's ``net.core.busy_poll``: a bounded amount of CPU after each request for latency.

The shortcut replaces ``pyfuse3._wait_fuse_readable``, which pyfuse3's session loop looks up
in its module namespace before every request. pyfuse3 reads the device right after that wait
returns, without yielding, so a task whose poll saw a request is the one that reads it. A task
may poll only while no other task waits in pyfuse3's own wait (which queues them on a lock):
otherwise a poll could take the request that woke the waiting task, whose read would then
block the whole loop. After :data:`CHECKPOINT_EVERY` requests in a row trio gets its turn
anyway (signals, and the answers of requests that ran in worker threads).

The loop keeps pyfuse3's worker tasks (``threads`` + 1): a request that runs in a worker
thread (``fsync``, a long copy-up, whose data the stack copies without its lock) does not hold
up the requests behind it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import select
import time
from collections.abc import Awaitable, Callable

import pyfuse3

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 64
"""Requests served back to back before the loop lets other trio tasks run."""

_PYFUSE3_WAIT = "_wait_fuse_readable"
# The hook is a private name: trust it only in the major version whose loop was read (3.x).
_KNOWN_PYFUSE3 = importlib.metadata.version("pyfuse3").split(".")[0] == "3"

Wait = Callable[[], Awaitable[bool]]


async def serve_requests(*, busy_poll_us: int, threads: int) -> None:
    """Run pyfuse3's request loop until the session ends (in place of ``pyfuse3.main()``)."""
    original: Wait | None = getattr(pyfuse3, _PYFUSE3_WAIT, None) if _KNOWN_PYFUSE3 else None
    fd = _fuse_device_fd() if busy_poll_us > 0 and original is not None else None
    if original is None or fd is None:
        # one task per worker thread that may hold a request, one to read the next
        await pyfuse3.main(min_tasks=1, max_tasks=threads + 1)
        return
    busy = BusyPoll(fd, busy_poll_us * 1000, original)
    setattr(pyfuse3, _PYFUSE3_WAIT, busy.wait)
    try:
        await pyfuse3.main(min_tasks=1, max_tasks=threads + 1)
    finally:
        setattr(pyfuse3, _PYFUSE3_WAIT, original)
    log.info("busy-poll: %d of %d requests read without sleeping", busy.caught, busy.waits)


class BusyPoll:
    """The replacement for pyfuse3's wait: poll first, then fall back to pyfuse3's own."""

    def __init__(self, fd: int, window_ns: int, original: Wait) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._window_ns = window_ns
        self._original = original
        self._in_a_row = 0
        self._waiting = 0  # tasks inside pyfuse3's own wait
        self.waits = 0
        self.caught = 0

    async def wait(self) -> bool:
        """True when a request can be read (pyfuse3's contract), False when the loop ends."""
        self.waits += 1
        if not self._waiting and self._in_a_row < CHECKPOINT_EVERY and self._spin():
            self._in_a_row += 1
            self.caught += 1
            return True
        self._in_a_row = 0
        self._waiting += 1
        try:
            return await self._original()
        finally:
            self._waiting -= 1

    def _spin(self) -> bool:
        deadline = time.perf_counter_ns() + self._window_ns
        poll = self._poll.poll
        while not poll(0):
            if time.perf_counter_ns() > deadline:
                return False
            os.sched_yield()  # a runnable process on this CPU (the caller, say) goes first
        return True


def _fuse_device_fd() -> int | None:
    """The session's ``/dev/fuse`` descriptor: the only one a mount daemon has open."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue
    if len(found) != 1:
        log.warning("busy-poll off: %d /dev/fuse descriptors open", len(found))
        return None
    return found[0]
