"""Names at NAME_MAX and deep paths through a real mount: done whole, or failed with nothing
changed (the same cases as ``tests/limits`` for the core, here with the kernel in front)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuse.conftest import Mounter
from tests.treedesc import Tree, host_tree

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.timeout(120)]

LENGTHS = (250, 251, 252, 253, 254, 255)


def _state(mnt: Path, upper: Path) -> tuple[Tree, list[str]]:
    return host_tree(mnt), sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))


def _fails_cleanly(mnt: Path, upper: Path, code: int, call: Callable[[], object]) -> None:
    before = _state(mnt, upper)
    with pytest.raises(OSError) as failed:
        call()
    assert failed.value.errno == code
    assert _state(mnt, upper) == before, "a failed operation changed something"


def test_long_names_through_the_mount(mounter: Mounter) -> None:
    lower: dict[str, str | bytes | None] = {"m/f": "lower f", "m/keep": "k"}
    lower |= {f"m/{'l' * n}": f"long {n}" for n in LENGTHS}
    dirs = mounter.layers(lower)
    mnt = mounter.mount(dirs)
    assert dirs.upper is not None
    m = mnt / "m"
    for n in LENGTHS:
        new = m / ("n" * n)
        new.write_text("created")
        os.rename(m / "f", new)  # a lower file to a long name: a whiteout at "f"
        assert new.read_text() == "lower f" and not (m / "f").exists()
        os.rename(new, m / "f")
        os.link(m / "keep", new)
        assert os.stat(new).st_ino == os.stat(m / "keep").st_ino
        os.unlink(new)
        os.mkdir(new)
        os.rmdir(new)
        lower_long = m / ("l" * n)
        os.rename(lower_long, m / "moved")
        os.rename(m / "moved", lower_long)
        os.unlink(lower_long)
        assert not lower_long.exists()
        lower_long.write_text("again")  # over its whiteout
    too_long = m / ("x" * 256)
    _fails_cleanly(mnt, dirs.upper, errno.ENAMETOOLONG, lambda: too_long.write_text("x"))
    _fails_cleanly(mnt, dirs.upper, errno.ENAMETOOLONG, lambda: os.rename(m / "f", too_long))
    _fails_cleanly(mnt, dirs.upper, errno.ENAMETOOLONG, lambda: os.mkdir(too_long))
    mounter.unmount(mnt)


def test_a_deep_tree_through_the_mount(mounter: Mounter) -> None:
    """Built one name at a time with descriptors (a path argument stops at PATH_MAX)."""
    dirs = mounter.layers({"d": None})
    mnt = mounter.mount(dirs)
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(30):  # 30 levels of 250-byte names: far past 4,096 bytes in all
            os.mkdir("e" * 250, dir_fd=fd)
            deeper = os.open("e" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        leaf = os.open("f" * 255, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"deep")
        os.close(leaf)
        os.rename("f" * 255, "g", src_dir_fd=fd, dst_dir_fd=fd)
        assert os.stat("g", dir_fd=fd).st_size == 4
    finally:
        os.close(fd)
    mounter.unmount(mnt)
