"""Read the mount table (``/proc/self/mountinfo``) to tell whether a path is a mount point.

Comparing ``st_dev`` with the parent misses bind mounts of the same filesystem and hangs on a
dead FUSE mount; the mount table answers both without touching the mount itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of the mount table: where, which filesystem type, and its source."""

    mountpoint: Path
    fstype: str
    source: str


def entries() -> list[MountEntry]:
    """All mounts visible to this process, in mount order."""
    result = []
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-")
        result.append(
            MountEntry(
                mountpoint=Path(_unescape(fields[4])),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
            )
        )
    return result


def find(path: Path) -> MountEntry | None:
    """The top-most mount whose mount point is exactly *path* (already resolved), if any."""
    found = None
    for entry in entries():
        if entry.mountpoint == path:
            found = entry
    return found


def under(directory: Path) -> list[MountEntry]:
    """Mounts at or below *directory* (for cleanup checks)."""
    return [e for e in entries() if e.mountpoint == directory or directory in e.mountpoint.parents]


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)
