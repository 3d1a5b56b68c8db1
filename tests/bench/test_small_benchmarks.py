"""Smoke tests of the one-question benchmarks, ``benchmarks.mount_start`` and
``benchmarks.page_cache``: every system is measured (none skipped: a layerfs that cannot mount
fails them), a verdict line is printed, and nothing stays mounted or on disk. They never look
at the measured values."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.mounts import mounts_under

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.kernel,
    pytest.mark.fuse,
    pytest.mark.interop,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not shutil.which("fuse-overlayfs"), reason="needs fuse-overlayfs"),
]


def run_benchmark(tmp_path: Path, module: str, *args: str) -> dict[str, str]:
    """Run ``python -m benchmarks.MODULE ARGS`` with its scratch space in *tmp_path*; its
    output lines by first word. Checks that it left nothing behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{module}", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert not mounts_under(tmp_path)
        assert not list(tmp_path.iterdir())  # its scratch directory is gone
    finally:
        for point in mounts_under(tmp_path):
            subprocess.run(["umount", "-l", str(point)], check=False)
    return {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}


def test_mount_start_times_every_system(tmp_path: Path) -> None:
    rows = run_benchmark(tmp_path, "mount_start", "--reps", "1")
    for system in ("kernel", "fuse-overlayfs", "layerfs", "layerfs-dropin", "layerfs-pyfuse3"):
        assert re.search(r"\d ?ms", rows.get(system, "")), rows
    assert re.match(r"(PASS|MISS)  layerfs mount", rows.get("PASS", rows.get("MISS", ""))), rows


def test_page_cache_reads_through_two_mounts_of_every_system(tmp_path: Path) -> None:
    rows = run_benchmark(tmp_path, "page_cache", "--reps", "1", "--size-mib", "8")
    for system in ("kernel", "fuse-overlayfs", "layerfs", "layerfs-pyfuse3"):
        assert "MiB" in rows.get(system, ""), rows
    verdict = rows.get("PASS", rows.get("MISS", ""))
    assert re.match(r"(PASS|MISS)  layerfs, two mounts", verdict), rows
