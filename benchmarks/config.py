"""Sizes of the generated stacks and the options of one benchmark run.

The full sizes follow the performance issue; the quick sizes exist only so that a smoke test
can run every workload in seconds. Their numbers say nothing about performance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20  # bytes
GIB = 1 << 30  # bytes
SEQ_CHUNK = 1 * MIB  # bytes per sequential read
RAND_BLOCK = 4096  # bytes per random read
SMALL_FILE = 100  # bytes written per created file
DEFAULT_SEED = 20240611

STATES = ("cold", "warm", "fresh")
SYSTEMS = ("plain", "kernel", "fuse-overlayfs", "layerfs", "layerfs-pyfuse3")


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each generated stack is."""

    wide_files: int
    wide_dirs: int
    wide_layers: int
    deep_depths: tuple[int, ...]
    deep_files: int
    big_bytes: int
    rand_reads: int
    huge_entries: int
    huge_layers: int
    mut_big_bytes: int
    mut_files: int
    create_files: int


FULL = Sizes(
    wide_files=20_000,
    wide_dirs=300,
    wide_layers=4,
    deep_depths=(1, 2, 4, 8, 16, 32, 64, 128),
    deep_files=1_000,
    big_bytes=1 * GIB,
    rand_reads=10_000,
    huge_entries=100_000,
    huge_layers=4,
    mut_big_bytes=256 * MIB,
    mut_files=1_000,
    create_files=10_000,
)

QUICK = Sizes(
    wide_files=600,
    wide_dirs=20,
    wide_layers=4,
    deep_depths=(1, 8),
    deep_files=100,
    big_bytes=16 * MIB,
    rand_reads=500,
    huge_entries=2_000,
    huge_layers=4,
    mut_big_bytes=4 * MIB,
    mut_files=100,
    create_files=200,
)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a run was asked to do, after argument parsing."""

    sizes: Sizes
    quick: bool
    reps: int
    seed: int
    workdir: Path
    workdir_is_temporary: bool
    keep: bool
    workloads: tuple[str, ...]
    systems: tuple[str, ...]
    states: tuple[str, ...]
    pass_timeout: float = 1800.0  # seconds before a FUSE daemon stuck in one pass is killed
