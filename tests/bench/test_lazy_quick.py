"""Smoke test of ``python -m benchmarks.lazy --quick``: it runs end to end (registry,
containerd, throttling proxy, full pull + FUSE mount, lazy pulls) and writes its samples.
It never looks at the measured values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("docker-registry", "containerd", "ctr-remote", "skopeo", "umoci")

pytestmark = [
    pytest.mark.root,
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.interop,
    pytest.mark.network,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
]


def test_quick_lazy_benchmark_runs(tmp_path: Path) -> None:
    env = {**os.environ, "LAYERFS_CONFIG": str(tmp_path / "config")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.lazy", "--quick", "--results", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = tmp_path.glob("*/lazy.json")
    samples = json.loads(written.read_text())["samples"]
    modes = {(s["format"], s["command"], s["mode"]) for s in samples}
    assert len(modes) == 2 * 2 * 3
    assert "lazy-no-prefetch" in done.stdout
