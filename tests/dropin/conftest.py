"""Fixtures of the drop-in tests: the FUSE mount fixtures of tests/fuse, and a test user."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dropin.users import User, unprivileged_user
from tests.fuse.conftest import mounter as mounter
from tests.fuse.conftest import no_mounts_left as no_mounts_left


@pytest.fixture(scope="session")
def unprivileged() -> Iterator[User]:
    """A user made for this run, with subordinate ids and layerfs runnable (tests.dropin.users)."""
    with unprivileged_user() as user:
        yield user
