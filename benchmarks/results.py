"""Samples, their summary (median and spread per system) and the ratios between systems.

A sample is one measurement: a workload, an optional variant (``depth=16``), a cache state,
a system, a repetition, and a value in the unit its metric implies (seconds, seconds per
operation, or bytes). Rows group the samples of one (workload, variant, state, metric).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field

METRIC_UNITS = {"time": "s", "time_per_op": "s/op", "peak_rss": "B"}

# (numerator, denominator) pairs reported for every row where both were measured.
RATIO_PAIRS: tuple[tuple[str, str], ...] = (
    ("layerfs", "fuse-overlayfs"),
    ("layerfs", "kernel"),
    ("layerfs", "layerfs-pyfuse3"),
    ("layerfs-pyfuse3", "kernel"),
    ("kernel", "plain"),
    ("fuse-overlayfs", "plain"),
    ("layerfs", "plain"),
    ("layerfs", "umoci"),
    ("layerfs", "tar"),
    ("layerfs", "tar+zstd"),
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement."""

    workload: str
    variant: str
    state: str
    metric: str
    system: str
    rep: int
    value: float


RowKey = tuple[str, str, str, str]  # workload, variant, state, metric


@dataclass(frozen=True, slots=True)
class Stat:
    """Median and range of one system's samples in one row."""

    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative width of the range, 0 for a single sample."""
        return (self.high - self.low) / self.median if self.median else 0.0


@dataclass(slots=True)
class Row:
    """The per-system statistics of one (workload, variant, state, metric)."""

    key: RowKey
    stats: dict[str, Stat] = field(default_factory=dict)

    def ratio(self, num: str, den: str) -> float | None:
        """median(num) / median(den), or None when either is missing or zero."""
        a, b = self.stats.get(num), self.stats.get(den)
        if a is None or b is None or b.median == 0:
            return None
        return a.median / b.median


@dataclass(slots=True)
class Recorder:
    """Collects samples and the reasons anything was skipped, printing the latter at once."""

    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def skip(self, message: str) -> None:
        """Record and print why a system, state or workload is not measured."""
        if message not in self.skipped:
            self.skipped.append(message)
            print(f"skip: {message}", file=sys.stderr, flush=True)


def summarize(samples: list[Sample]) -> list[Row]:
    """Group samples into rows, keeping the order in which rows were first measured."""
    grouped: dict[RowKey, dict[str, list[float]]] = {}
    for s in samples:
        key = (s.workload, s.variant, s.state, s.metric)
        grouped.setdefault(key, {}).setdefault(s.system, []).append(s.value)
    rows = []
    for key, by_system in grouped.items():
        row = Row(key)
        for system, values in by_system.items():
            row.stats[system] = Stat(
                statistics.median(values), min(values), max(values), len(values)
            )
        rows.append(row)
    return rows


def ratios(row: Row) -> dict[str, float]:
    """Every ratio of :data:`RATIO_PAIRS` that can be computed for *row*, named ``a/b``."""
    out = {}
    for num, den in RATIO_PAIRS:
        value = row.ratio(num, den)
        if value is not None:
            out[f"{num}/{den}"] = value
    return out
