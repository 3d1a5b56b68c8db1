"""The entry points outside the core package: ``python -m layerfs.cli`` and ``make demo``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import layerfs

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds


def test_python_m_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "layerfs.cli", "--version"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"layerfs, version {layerfs.__version__}"


def test_the_core_package_has_no_entry_point() -> None:
    assert not (REPO / "layerfs" / "__main__.py").exists()
    done = subprocess.run(
        [sys.executable, "-m", "layerfs", "--version"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode != 0


@pytest.mark.root
@pytest.mark.fuse
def test_demo_shows_shadowing_a_whiteout_and_a_copy_up(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "layerfs.cli.demo"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| motd from the middle layer" in out
    assert "| version=2" in out
    assert "merged /app now lists: ['config', 'data.txt']" in out
    assert "| appended through the mount" in out
    assert "old.log  -> whiteout (character device 0/0)" in out
    assert "data.txt  -> file, " in out
    assert "unmounted; the lower layers never changed. Done." in out
    assert list(tmp_path.iterdir()) == []  # the demo removed its tree
