"""One mount's life, whichever session backend serves it (mount option ``backend=``).

:func:`serve` mounts *stack*, serves requests until the filesystem is unmounted from outside
(``layerfs umount``, ``fusermount3 -u``) or the process gets SIGTERM/SIGINT, and unmounts. The
backends (:mod:`fuse_mount.session` for the native protocol, :mod:`fuse_mount.pyfuse3_session`
for pyfuse3 and trio) are imported only when chosen: the native one needs neither libfuse nor
trio, which keeps the daemon's start short.
"""

from __future__ import annotations

import faulthandler
import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from layerfs.errors import LayerfsError

if TYPE_CHECKING:
    from fuse_mount.options import MountOptions
    from layerfs import Stack


class MountFailedError(LayerfsError):
    """The kernel, fusermount3 or libfuse refused the mount (the message says why)."""


GC_THRESHOLD = (10_000, 10, 10)  # allocations before a young collection, and the older ratios


def tune_gc() -> None:
    """Fewer cyclic garbage collections while serving.

    A fresh listing creates several objects per name (nodes, index entries, replies); with
    Python's default threshold of 700 allocations the collector then runs every few dozen
    names and its older generations walk every node the kernel holds. Everything alive now
    (modules, the stack) is moved out of the collector's sight for good (``gc.freeze``).
    Readdirplus of 100,000 names in process: about 1.1 -> 0.95 s; peak memory unchanged.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


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
    faulthandler.enable()
    tune_gc()
    if options.backend == "pyfuse3":
        from fuse_mount import pyfuse3_session

        pyfuse3_session.serve(stack, mountpoint, options, on_ready=on_ready)
    else:
        from fuse_mount import session

        session.serve(stack, mountpoint, options, on_ready=on_ready)
