"""The performance targets of the issue, each checked against the measured medians.

A target is PASS or MISS when both of its numbers were measured and ``n/a`` otherwise (for
example while layerfs cannot mount yet); ``n/a`` is never counted as a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.results import Row, RowKey

MS = 1e-3  # seconds
MIB = 1 << 20  # bytes
FO = "fuse-overlayfs"
LFS = "layerfs"  # the default (native) backend
METADATA = ("stat", "walk", "bigdir")  # cold and fresh: <= 0.5x fuse-overlayfs, <= 4x kernel


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target line: what is compared, the measured value, the limit and the outcome."""

    label: str
    value: float | None
    limit: float
    unit: str  # "x" for a ratio, "s" or "B" for an absolute limit

    @property
    def outcome(self) -> str:
        if self.value is None:
            return "n/a"
        return "PASS" if self.value <= self.limit else "MISS"


def evaluate(rows: list[Row]) -> list[Verdict]:
    """Every target that applies to the workloads of this run, in the issue's order."""
    by_key = {row.key: row for row in rows}
    timed = [row for row in rows if row.key[3] in ("time", "time_per_op")]
    out = _keyed(by_key, ("read", "", "warm", "time"), LFS, "kernel", 2.0)
    out += _keyed(by_key, ("tar", "", "warm", "time"), LFS, "kernel", 1.5)
    out += _keyed(by_key, ("read", "", "fresh", "time"), LFS, "kernel", 3.0)
    out += _keyed(by_key, ("seqread", "", "cold", "time"), LFS, "kernel", 1.1)
    out += _keyed(by_key, ("randread", "", "fresh", "time"), LFS, "kernel", 1.5)
    meta = [r for r in timed if r.key[2] in ("cold", "fresh") and r.key[0] in METADATA]
    out += [_ratio(row, LFS, FO, 0.5) for row in meta]
    out += [_ratio(row, LFS, "kernel", 4.0) for row in meta]
    out += _keyed(by_key, ("walk", "", "warm", "time"), LFS, "kernel", 1.5)
    out += _depth(rows)
    for w in ("create", "unlink", "rename"):
        out += _keyed(by_key, (w, "", "fresh", "time"), LFS, FO, 1.5)
    out += _rss(rows)
    out += _keyed(by_key, ("apply", "", "warm", "time"), LFS, "umoci", 1.0)
    out += _keyed(by_key, ("apply", "", "warm", "time"), LFS, "tar", 1.0)
    out += _keyed(by_key, ("mklayer", "", "warm", "time"), LFS, "tar+zstd", 1.2)
    return out


def _label(key: RowKey) -> str:
    w, v, state, _ = key
    return f"{w}{' ' + v if v else ''} {state}"


def _ratio(row: Row, num: str, den: str, limit: float) -> Verdict:
    return Verdict(f"{_label(row.key)}: {num}/{den}", row.ratio(num, den), limit, "x")


def _keyed(
    by_key: dict[RowKey, Row], key: RowKey, num: str, den: str, limit: float
) -> list[Verdict]:
    row = by_key.get(key)
    return [] if row is None else [_ratio(row, num, den, limit)]


def _depth(rows: list[Row]) -> list[Verdict]:
    """layerfs's cost per lookup at the greatest measured depth over its cost at depth 1."""
    costs: dict[int, float] = {}
    depths: list[int] = []
    for row in rows:
        w, variant, state, metric = row.key
        if w == "lookup" and state == "fresh" and metric == "time_per_op":
            depth = int(variant.split("=", 1)[1])
            depths.append(depth)
            if LFS in row.stats:
                costs[depth] = row.stats[LFS].median
    if not depths or max(depths) == 1:
        return []
    deepest = max(depths)
    value = costs[deepest] / costs[1] if deepest in costs and costs.get(1) else None
    return [Verdict(f"lookup fresh: layerfs depth {deepest} / depth 1", value, 1.5, "x")]


def _rss(rows: list[Row]) -> list[Verdict]:
    """The highest median VmHWM of the layerfs daemon over all workloads."""
    peaks = [row for row in rows if row.key[3] == "peak_rss"]
    if not peaks:
        return []
    values = [row.stats[LFS].median for row in peaks if LFS in row.stats]
    return [Verdict("daemon peak RSS: layerfs", max(values) if values else None, 64 * MIB, "B")]
