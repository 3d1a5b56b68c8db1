"""A copy-up that fills the upper's filesystem fails whole: nothing half-copied stays behind.

The upper and work directories live on a small tmpfs; the lower holds a file larger than it.
With metadata-only copy-up on, the chmod succeeds (no data moves) and the first write then needs
the data: that deferred copy hits ENOSPC and must give every block back, so the filesystem is
not left full, not even after a remount. With it off, the full copy-up fails in the work
directory and must leave nothing there.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs import Stack, StackOptions

pytestmark = pytest.mark.root

SMALL = 2 << 20  # bytes of the upper's filesystem
BIG = 3 << 20  # bytes of the lower file: more than fits


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "small"
    target.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(target)], check=True
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("metacopy", [False, True], ids=["full", "metacopy"])
def test_copy_up_that_fills_the_upper_changes_nothing(
    tmp_path: Path, small_fs: Path, metacopy: bool
) -> None:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    data = os.urandom(BIG)
    (lower / "d" / "big").write_bytes(data)
    upper, work = small_fs / "upper", small_fs / "work"
    upper.mkdir()
    work.mkdir()
    options = StackOptions(metacopy=metacopy)
    with Stack([lower], upper, work, options=options) as stack:
        if metacopy:
            stack.chmod("/d/big", 0o600)  # metadata only: fits
        used = _used(small_fs)
        with pytest.raises(OSError) as failed:
            stack.open("/d/big", os.O_WRONLY | os.O_APPEND)
        assert failed.value.errno == errno.ENOSPC
        assert _used(small_fs) == used, "the failed copy kept blocks"
        assert os.listdir(work / "work") == []
        assert stack.read_bytes("/d/big") == data
        assert stack.lstat("/d/big").size == BIG
        stack.write_bytes("/d/small", b"still room")  # the filesystem is not left full
    with Stack([lower], upper, work, options=options) as again:
        assert again.read_bytes("/d/big") == data
        assert again.read_bytes("/d/small") == b"still room"
        assert again.lstat("/d/big").mode & 0o777 == (0o600 if metacopy else 0o644)
