"""The command line draws progress bars on a terminal (one per task) and nothing elsewhere."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.store.builders import BASE, TOP, Image, write_oci_layout

TIMEOUT = 60  # seconds


def _layerfs(args: list[str], *, terminal: bool) -> tuple[int, str]:
    """Run ``layerfs ARGS`` with stderr on a new pseudo-terminal (or a pipe); exit status and
    what reached stderr."""
    argv = [sys.executable, "-m", "layerfs.cli", *args]
    if not terminal:
        done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
        return done.returncode, done.stderr.decode()
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = bytearray()
    try:
        while chunk := _read(master):
            seen += chunk
    finally:
        os.close(master)
        code = proc.wait(timeout=TIMEOUT)
    return code, seen.decode(errors="replace")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side is closed
        return b""


def test_bars_on_a_terminal_and_nothing_on_a_pipe(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "src", [Image("app:1", [BASE, TOP])])
    store = ["--root", str(tmp_path / "store")]
    code, drawn = _layerfs(["import", *store, str(tmp_path / "src")], terminal=True)
    assert code == 0, drawn
    assert "importing src" in drawn and "bytes" in drawn
    code, drawn = _layerfs(["unpack", *store, "app:1", str(tmp_path / "a")], terminal=True)
    assert code == 0, drawn
    assert "applying " in drawn
    code, quiet = _layerfs(["unpack", *store, "app:1", str(tmp_path / "b")], terminal=False)
    assert code == 0 and quiet == ""
