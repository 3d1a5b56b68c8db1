"""Unmount a layerfs mount and wait until its daemon has exited.

``fusermount3 -u`` is the normal way; when the daemon is already dead the kernel answers
ENOTCONN for the mount point and a plain unmount may find it busy, so a lazy ``umount -l``
detaches it instead. Waiting for the daemon matters to callers that reuse the upper directory
right after: until the daemon exits it may still hold files open there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from fuse_mount import daemon, mountinfo
from layerfs.errors import ConfigError, LayerfsError

EXIT_WAIT = 30.0  # seconds for the daemon to exit after the unmount
POLL_INTERVAL = 0.05  # seconds


class UnmountError(LayerfsError):
    """The mount could not be removed, or its daemon did not exit."""


def unmount(mountpoint: Path, *, wait: float = EXIT_WAIT) -> None:
    """Unmount *mountpoint* and wait up to *wait* seconds for its daemon to exit."""
    resolved = Path(os.path.realpath(mountpoint))
    entry = mountinfo.find(resolved)
    if entry is None:
        raise ConfigError(f"not mounted: {resolved}")
    pidfile = daemon.pidfile_path(resolved)
    owner = daemon.read_pidfile(pidfile)
    dead = daemon.is_enotconn(resolved)
    if dead or not _run_fusermount(resolved):
        _lazy_umount(resolved)
    if owner is not None:
        _wait_exit(*owner, wait)
    if pidfile.exists() and daemon.read_pidfile(pidfile) is None:
        pidfile.unlink(missing_ok=True)


def _run_fusermount(mountpoint: Path) -> bool:
    """Unmount with fusermount3 (or umount when it is missing); False if that failed."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", "-q", str(mountpoint)] if tool else ["umount", str(mountpoint)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return True
    if mountinfo.find(mountpoint) is None:
        return True
    if not daemon.is_enotconn(mountpoint):
        reason = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UnmountError(f"cannot unmount {mountpoint}: {reason}")
    return False


def _lazy_umount(mountpoint: Path) -> None:
    done = subprocess.run(
        ["umount", "-l", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 and mountinfo.find(mountpoint) is not None:
        reason = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UnmountError(f"cannot unmount {mountpoint}: {reason}")


def _wait_exit(pid: int, start_time: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while daemon.process_start_time(pid) == start_time:
        if time.monotonic() > deadline:
            raise UnmountError(f"mount daemon {pid} did not exit within {wait:g} s")
        time.sleep(POLL_INTERVAL)
