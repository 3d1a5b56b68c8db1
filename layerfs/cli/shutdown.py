"""Ending a mount command's process once its daemon serves the mount.

``layerfs mount`` (and the drop-in and ``mount.fuse.layerfs`` calls) return to their caller
when the daemon reports the mount ready, and a container engine waits for that return on
every container start. By then the command's process has nothing left to clean up: its
descriptors close with it and only stdio may hold buffered output. The interpreter's
ordinary teardown (freeing every module and object it imported) is still some tens of
milliseconds on a slow machine (``benchmarks/mount_start.py``), so these commands skip it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn


def exit_without_teardown(status: int = 0) -> NoReturn:
    """Flush stdio and the log handlers, then end the process with *status* at once.

    Only for a process whose remaining work is nothing: no atexit handler, finaliser or
    thread of it runs.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to say
            stream.flush()
    os._exit(status)
