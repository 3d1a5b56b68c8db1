"""Does one image stay one copy in memory? Page cache added by reading a file through two mounts.

One lower layer holds a 128 MiB file. For each system, with the page cache dropped first, two
mounts of that same layer (each with its own upper, as two containers of one image) are made
and the file is read to its end through both; the growth of ``Cached:`` in ``/proc/meminfo``
is the page cache that reading took. Kernel overlayfs keeps one copy (the lower file's); a
FUSE mount without passthrough keeps one more per mount. The issue's target: layerfs adds at
most 140 MiB in total. Usage: ``python -m benchmarks.page_cache [--reps N] [--size-mib N]``;
``make bench-cache`` runs it. Other activity on the machine moves ``Cached:`` too: read the
medians of several repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.mounts import FuseOverlayfs, Kernel, Layerfs, MountSpec, System

MIB = 1 << 20
TARGET_MIB = 140  # for the default 128 MiB file
FILE = "image.bin"


def cached_bytes() -> int:
    """``Cached:`` of ``/proc/meminfo``, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached: line in /proc/meminfo")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MIB):
            pass


def measure(system: System, base: Path, lower: Path, rep: int) -> int:
    """Bytes of page cache added by reading the file through two mounts of *system*."""
    runs = [base / f"{system.name}-{rep}-{i}" for i in range(2)]
    for run in runs:
        for d in ("upper", "work", "mnt"):
            (run / d).mkdir(parents=True)
    specs = [MountSpec((lower,), lower, run / "upper", run / "work") for run in runs]
    with (
        system.mount(specs[0], runs[0] / "mnt") as one,
        system.mount(specs[1], runs[1] / "mnt") as two,
    ):
        drop_caches()
        before = cached_bytes()
        read_all(one.path / FILE)
        read_all(two.path / FILE)
        return cached_bytes() - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--size-mib", type=int, default=128, help="size of the file")
    args = parser.parse_args(argv)
    systems: list[System] = [Kernel(), FuseOverlayfs(), Layerfs(), Layerfs("pyfuse3")]
    ready = [s for s in systems if not s.unavailable_reason()]
    for s in systems:
        if s not in ready:
            print(f"{s.name:16} skipped: {s.unavailable_reason()}")
    with tempfile.TemporaryDirectory(prefix="layerfs-cache-") as tmp:
        base = Path(tmp)
        lower = base / "lower"
        lower.mkdir()
        with open(lower / FILE, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        samples = {s.name: [measure(s, base, lower, r) for r in range(args.reps)] for s in ready}
    size = args.size_mib * MIB
    print(f"file: {args.size_mib} MiB, read through two mounts; page cache added (median)")
    for name, added in samples.items():
        median = statistics.median(added)
        print(f"{name:16} {median / MIB:7.1f} MiB  {median / size:5.2f}x the file")
    if "layerfs" in samples:
        limit = TARGET_MIB * MIB * size / (128 * MIB)  # bytes, scaled to the file's size
        value = statistics.median(samples["layerfs"])
        outcome = "PASS" if value <= limit else "MISS"
        print(f"{outcome}  layerfs, two mounts: {value / MIB:.1f} MiB  (<= {limit / MIB:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
