"""Dropping the host's caches before a cold measurement."""

from __future__ import annotations

import os
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_reason() -> str | None:
    """Why caches cannot be dropped here (so cold states are skipped), or None."""
    if os.geteuid() != 0 or not os.access(DROP_CACHES, os.W_OK):
        return f"cold cache state needs root to write {DROP_CACHES}"
    return None


def drop_caches() -> None:
    """Write back dirty data, then drop the page cache, dentries and inodes (``echo 3``)."""
    os.sync()
    DROP_CACHES.write_text("3\n")
