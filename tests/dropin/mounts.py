"""Reading the mount table with options, and waiting for a mount daemon to go away."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fuse_mount import daemon

MOUNTINFO = Path("/proc/self/mountinfo")
EXIT_WAIT = 30.0  # seconds for a daemon to exit after its mount went away


@dataclass(frozen=True)
class Mounted:
    """One line of the mount table: per-mount options, type, source, superblock options."""

    options: frozenset[str]
    fstype: str
    source: str
    super_options: frozenset[str]


def mounted(target: Path) -> Mounted | None:
    """The top-most mount at *target* (a resolved path), or None."""
    found = None
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-")
        if fields[4] == str(target):
            found = Mounted(
                frozenset(fields[5].split(",")),
                fields[sep + 1],
                fields[sep + 2],
                frozenset(fields[sep + 3].split(",")),
            )
    return found


def wait_gone(pid: int, start_time: str, wait: float = EXIT_WAIT) -> bool:
    """Whether the process *pid* (started at *start_time*) exits within *wait* seconds."""
    deadline = time.monotonic() + wait
    while daemon.process_start_time(pid) == start_time:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_pid(pidfile: Path) -> tuple[int, str]:
    """``(pid, start time)`` of the daemon recorded in *pidfile*, which must be alive."""
    owner = daemon.read_pidfile(pidfile)
    assert owner is not None, f"no live daemon recorded in {pidfile}"
    return owner
