"""Shared test configuration: capability checks that skip with a stated reason.

On CI (``CI=true``, root, ``/dev/fuse`` present) nothing that needs root, FUSE or kernel
overlayfs may be skipped: ``.ci/run`` checks the skip report and fails the run if one was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# helpers whose asserts are the tests' own
pytest.register_assert_rewrite("tests.differential.runs")

IS_ROOT = os.geteuid() == 0
HAS_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def _has_overlay() -> bool:
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


HAS_OVERLAY = _has_overlay()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("root") and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root"))
        if item.get_closest_marker("kernel") and not (IS_ROOT and HAS_OVERLAY):
            item.add_marker(pytest.mark.skip(reason="needs root and kernel overlayfs"))
        if item.get_closest_marker("fuse") and not HAS_FUSE:
            item.add_marker(pytest.mark.skip(reason="needs /dev/fuse and fusermount3"))


# -- CI guard: on a machine that can run everything, nothing privileged may be skipped --------
_GUARDED = ("root", "kernel", "fuse", "interop", "network")
_guarded_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and any(m in report.keywords for m in _GUARDED):
        _guarded_skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("LAYERFS_REQUIRE_ALL") != "1" or not _guarded_skips:
        return
    if not (IS_ROOT and HAS_FUSE and HAS_OVERLAY):
        return
    print("\nLAYERFS_REQUIRE_ALL: these root/kernel/FUSE/interop tests were skipped:")
    for nodeid in _guarded_skips:
        print(f"  {nodeid}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
