"""The pyfuse3 backend's session: mount with libfuse, serve under trio, unmount.

:func:`serve` blocks until the filesystem is unmounted from outside (``layerfs umount``,
``fusermount3 -u``) or the process gets SIGTERM/SIGINT, in which case it ends the session loop
with :func:`pyfuse3.terminate` and unmounts itself. A crash in the loop also unmounts, so a
dead daemon does not leave a mount that answers ENOTCONN.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from fuse_mount.loop import serve_requests
from fuse_mount.mount import MountFailedError
from fuse_mount.operations import Operations

if TYPE_CHECKING:
    from fuse_mount.options import MountOptions
    from layerfs import Stack

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(
    stack: Stack,
    mountpoint: Path,
    options: MountOptions,
    *,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount *stack* on *mountpoint* and serve requests until unmounted or signalled.

    *on_ready* runs once the kernel mount exists and the request loop is about to start.
    Raises :class:`MountFailedError` if the mount itself fails.
    """
    operations = Operations(
        stack,
        timeouts=options.timeouts,
        threads=options.threads,
        idmap=options.idmap,
        acl=options.acl,
    )
    _init_session(operations, mountpoint, options)
    log.info("mounted %s", mountpoint)
    try:
        trio.run(_main_loop, options, on_ready)
    finally:
        # libfuse checks the session first and skips the unmount when the kernel already
        # ended it (an outside unmount), so this is right after a signal, a crash or either.
        pyfuse3.close(unmount=True)
        operations.shutdown()
        log.info("unmounted %s", mountpoint)


def _init_session(operations: Operations, mountpoint: Path, options: MountOptions) -> None:
    with _captured_stderr() as captured:
        try:
            pyfuse3.init(operations, str(mountpoint), set(options.fuse_options))
        except RuntimeError as exc:
            detail = captured().strip().splitlines()
            reason = detail[-1] if detail else str(exc)
            raise MountFailedError(f"cannot mount {mountpoint}: {reason}") from None


@contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """Collect what libfuse writes to file descriptor 2, to turn it into one error line."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield lambda: _read_all(capture.fileno())
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 1 << 16).decode(errors="replace")


async def _main_loop(options: MountOptions, on_ready: Callable[[], None]) -> None:
    """Run the FUSE loop until the session ends or a stop signal arrives."""
    async with trio.open_nursery() as nursery:
        # Catch the stop signals before the first request: the busy-polling loop may serve
        # many requests before trio runs another task, and until the receiver exists SIGTERM
        # would kill the daemon and SIGINT raise KeyboardInterrupt, without an unmount.
        await nursery.start(_stop_on_signal)
        on_ready()
        await serve_requests(busy_poll_us=options.busy_poll_us, threads=options.threads)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info("got %s, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return
