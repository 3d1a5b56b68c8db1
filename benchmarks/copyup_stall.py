"""Does a large copy-up stall the rest of the mount? A stat loop, alone and during one.

One stack: a big lower file (1 GiB; ``--quick``: 64 MiB) and a directory of small lower
files. On each system, a loop ``lstat``s every small file by path, with the dentry cache
dropped first (``echo 2 > /proc/sys/vm/drop_caches``, so every name is looked up again):
once with the mount idle, once while another process appends one byte to the big file
(a full copy-up of it on every overlay). The loop's time during the copy over its time
alone says how much a copy-up stalls unrelated lookups: 1.0 is not at all. Kernel overlayfs
and fuse-overlayfs run beside layerfs's two session backends; the copy's own time is
reported too. Usage: ``python -m benchmarks.copyup_stall [--quick] [--reps N]``; the
``make bench`` run does not include it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.mounts import FuseOverlayfs, Kernel, Layerfs, MountSpec, System

SMALL_FILES = 5_000
CHUNK = 1 << 20  # bytes


def build(base: Path, big_bytes: int) -> tuple[Path, Path]:
    """The lower layer and the plain-directory equivalent (the same directory here)."""
    lower = base / "lower"
    (lower / "small").mkdir(parents=True)
    with open(lower / "big", "wb") as f:
        block = os.urandom(CHUNK)
        for _ in range(big_bytes // CHUNK):
            f.write(block)
    for i in range(SMALL_FILES):
        (lower / "small" / f"f{i:05}").write_bytes(b"x")
    return lower, lower


def stat_loop(root: Path) -> float:
    """Seconds to lstat every small file, names looked up afresh."""
    Path("/proc/sys/vm/drop_caches").write_text("2\n")
    start = time.perf_counter()
    for i in range(SMALL_FILES):
        os.lstat(root / "small" / f"f{i:05}")
    return time.perf_counter() - start


def copy_up(root: Path) -> subprocess.Popen[bytes]:
    """Another process appending one byte to the big file: a copy-up of all of it."""
    code = f"open({str(root / 'big')!r}, 'ab').write(b'!')"
    return subprocess.Popen([sys.executable, "-c", code])


def measure(system: System, base: Path, lower: Path, rep: int) -> tuple[float, float, float]:
    """(loop alone, loop during the copy-up, the copy-up's own time) on a fresh mount."""
    run = base / f"{system.name}-{rep}"
    upper, work, target = run / "upper", run / "work", run / "mnt"
    for d in (upper, work, target):
        d.mkdir(parents=True)
    spec = MountSpec((lower,), lower, upper, work)
    with system.mount(spec, target) as mounted:
        alone = stat_loop(mounted.path)
        start = time.perf_counter()
        writer = copy_up(mounted.path)
        during = stat_loop(mounted.path)
        writer.wait()
        copy = time.perf_counter() - start
        if writer.returncode != 0:
            raise RuntimeError(f"{system.name}: the copy-up failed")
    return alone, during, copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 64 MiB file, one repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    big = (64 if args.quick else 1024) << 20
    systems: list[System] = [Kernel(), FuseOverlayfs(), Layerfs(), Layerfs("pyfuse3")]
    with tempfile.TemporaryDirectory(prefix="layerfs-stall-") as tmp:
        base = Path(tmp)
        lower, _ = build(base, big)
        print(f"{'system':16} {'alone':>9} {'during':>9} {'ratio':>7} {'copy-up':>9}")
        for system in systems:
            reason = system.unavailable_reason()
            if reason:
                print(f"{system.name:16} skipped: {reason}")
                continue
            samples = [measure(system, base, lower, rep) for rep in range(reps)]
            alone = statistics.median(s[0] for s in samples)
            during = statistics.median(s[1] for s in samples)
            copy = statistics.median(s[2] for s in samples)
            print(
                f"{system.name:16} {alone * 1e3:8.0f}ms {during * 1e3:8.0f}ms"
                f" {during / alone:6.2f}x {copy:8.2f}s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
