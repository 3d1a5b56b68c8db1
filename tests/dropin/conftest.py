"""Fixtures of the drop-in tests: the FUSE mount fixtures, shared with tests/fuse."""

from __future__ import annotations

from tests.fuse.conftest import mounter as mounter
from tests.fuse.conftest import no_mounts_left as no_mounts_left
