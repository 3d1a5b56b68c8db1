"""Smoke tests of ``python -m benchmarks.run --quick`` on real mounts.

They check that every workload produced samples on every system that can run here (layerfs,
with both session backends, above all: a layerfs that cannot mount fails them), that the
outputs exist, and that nothing stays mounted or on disk afterwards,
including after Ctrl-C. They never look at the measured values.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.library import LIBRARY_WORKLOADS
from benchmarks.mounts import mounts_under
from benchmarks.workloads import WORKLOADS

REPO = Path(__file__).resolve().parents[2]
BASELINES = ("plain", "kernel", "fuse-overlayfs")

pytestmark = [
    pytest.mark.root,
    pytest.mark.kernel,
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.interop,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("fuse-overlayfs", "umoci", "zstd")),
        reason="needs fuse-overlayfs, umoci and zstd",
    ),
]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """*tmp_path*, with anything the harness might have left mounted there detached after."""
    yield tmp_path
    for point in mounts_under(tmp_path):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _harness(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", "--quick", *args]


@pytest.mark.timeout(600)
def test_quick_run_measures_every_workload_and_cleans_up(scratch: Path) -> None:
    work = scratch / "work"
    out = scratch / "out.json"
    proc = subprocess.run(
        _harness(
            "--workdir", str(work), "--json", str(out),
            "--plots", str(scratch / "plots"), "--results", str(scratch / "results"),
        ),
        cwd=REPO, capture_output=True, text=True, timeout=550, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    measured = {(s["workload"], s["system"]) for s in doc["samples"] if s["metric"] != "peak_rss"}
    for workload in WORKLOADS:
        for system in BASELINES:
            assert (workload.name, system) in measured, (workload.name, system, doc["skipped"])
    for name, system in (("apply", "umoci"), ("apply", "tar"), ("mklayer", "tar+zstd")):
        assert (name, system) in measured
    # layerfs is what is measured: it must run every workload (a layerfs that cannot mount, or
    # fails one workload, is skipped by the harness with its reason, and fails this test)
    assert [s for s in doc["skipped"] if s.startswith("layerfs")] == []
    for name in {w.name for w in WORKLOADS} | set(LIBRARY_WORKLOADS):
        assert (name, "layerfs") in measured, name
    for workload in WORKLOADS:
        assert (workload.name, "layerfs-pyfuse3") in measured, workload.name
    rss = {s["system"] for s in doc["samples"] if s["metric"] == "peak_rss"}
    assert "fuse-overlayfs" in rss
    assert any(t["outcome"] in ("PASS", "MISS", "n/a") for t in doc["targets"])
    assert "targets:" in proc.stdout and "walk" in proc.stdout
    assert (scratch / "plots" / "ratios.png").stat().st_size > 0
    assert (scratch / "plots" / "lookup-depth.png").stat().st_size > 0
    (raw,) = (scratch / "results").iterdir()
    assert (raw / "samples.csv").read_text().startswith("workload,")
    assert json.loads((raw / "metadata.json").read_text())["commit"]
    assert mounts_under(scratch) == []
    assert not (work / "scratch").exists()
    assert (work / "stacks" / "wide" / "stamp.json").exists()


@pytest.mark.timeout(300)
def test_interrupt_unmounts_and_removes_the_temporary_tree(scratch: Path) -> None:
    tmp = scratch / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen(
        _harness("--only", "walk,lookup,create", "--results", str(scratch / "results")),
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "workload lookup" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert mounts_under(scratch) == []
    assert list(tmp.iterdir()) == []
