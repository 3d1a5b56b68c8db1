"""Smoke test of ``python -m benchmarks.mount_start``: every system mounts, is timed and is
unmounted again. It never looks at the measured values."""

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
    pytest.mark.skipif(not shutil.which("fuse-overlayfs"), reason="needs fuse-overlayfs"),
]


@pytest.mark.timeout(300)
def test_every_system_is_timed_and_unmounted(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.mount_start", "--reps", "1"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
        for system in ("kernel", "fuse-overlayfs", "layerfs", "layerfs-dropin", "layerfs-pyfuse3"):
            assert re.search(r"\d ?ms", rows.get(system, "")), proc.stdout  # measured, not skipped
        assert re.search(r"^(PASS|MISS)  layerfs mount", proc.stdout, re.M), proc.stdout
        assert not mounts_under(tmp_path)
        assert not list(tmp_path.iterdir())  # its scratch directory is gone
    finally:
        for point in mounts_under(tmp_path):
            subprocess.run(["umount", "-l", str(point)], check=False)
