"""Smoke test of ``python -m benchmarks.page_cache``: every system mounts twice, the file is
read through both mounts and everything is unmounted again. It never looks at the values."""

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
def test_every_system_reads_through_two_mounts(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.page_cache", "--reps", "1", "--size-mib", "8"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
        for system in ("kernel", "fuse-overlayfs", "layerfs", "layerfs-pyfuse3"):
            assert "MiB" in rows.get(system, ""), proc.stdout  # measured, not skipped
        assert re.search(r"^(PASS|MISS)  layerfs, two mounts", proc.stdout, re.M), proc.stdout
        assert not mounts_under(tmp_path)
        assert not list(tmp_path.iterdir())
    finally:
        for point in mounts_under(tmp_path):
            subprocess.run(["umount", "-l", str(point)], check=False)
