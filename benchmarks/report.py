"""Human-readable tables, the JSON document and the raw CSV of a run.

The table has one line per (workload, variant, cache state): each system's median with its
spread ((max - min) / median over the repetitions), then the ratios of medians. The targets
follow as PASS / MISS / n/a lines; then everything that was skipped, with the reason.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.results import Row, Sample, ratios
from benchmarks.targets import Verdict

MOUNT_COLUMNS = ("plain", "kernel", "fuse-overlayfs", "layerfs", "layerfs-pyfuse3")
LIBRARY_COLUMNS = ("umoci", "tar", "tar+zstd", "layerfs")
SHORT = {
    "fuse-overlayfs": "fuse-ovl",
    "layerfs": "layerfs",
    "layerfs-pyfuse3": "pyfuse3",
    "plain": "plain",
    "kernel": "kernel",
}


def format_seconds(value: float) -> str:
    """Seconds with a unit that keeps three significant figures readable."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def format_value(value: float, metric: str) -> str:
    if metric == "peak_rss":
        return f"{value / (1 << 20):.1f} MiB"
    suffix = "/op" if metric == "time_per_op" else ""
    return format_seconds(value) + suffix


def _ratio_name(name: str) -> str:
    num, den = name.split("/")
    return f"{SHORT.get(num, num)}/{SHORT.get(den, den)}"


def table(rows: list[Row], library: bool) -> str:
    """The table of the mount workloads (or, with *library*, of apply and mklayer)."""
    columns = LIBRARY_COLUMNS if library else MOUNT_COLUMNS
    chosen = [
        r for r in rows if (r.key[0] in ("apply", "mklayer")) == library and r.key[3] != "peak_rss"
    ]
    if not chosen:
        return ""
    present = [c for c in columns if any(c in r.stats for r in chosen)]
    ratio_names = [n for n in _ordered_ratios(chosen)]
    header = ["workload", "state", *(SHORT.get(c, c) for c in present)]
    header += [_ratio_name(n) for n in ratio_names]
    lines = [header]
    for row in chosen:
        w, variant, state, metric = row.key
        cells = [f"{w} {variant}".strip(), state]
        for c in present:
            s = row.stats.get(c)
            cells.append(f"{format_value(s.median, metric)} ±{s.spread:.0%}" if s else "-")
        found = ratios(row)
        cells += [f"{found[n]:.2f}" if n in found else "-" for n in ratio_names]
        lines.append(cells)
    return _align(lines)


def rss_table(rows: list[Row]) -> str:
    """Daemon peak RSS (VmHWM) per workload: the highest median over the mounts' states."""
    peaks: dict[str, dict[str, float]] = {}
    for row in rows:
        w, variant, _state, metric = row.key
        if metric != "peak_rss":
            continue
        line = peaks.setdefault(f"{w} {variant}".strip(), {})
        for system, s in row.stats.items():
            line[system] = max(line.get(system, 0.0), s.median)
    systems = [c for c in MOUNT_COLUMNS if any(c in p for p in peaks.values())]
    if not peaks:
        return ""
    lines = [["daemon peak RSS", *(SHORT.get(c, c) for c in systems)]]
    for name, line in peaks.items():
        lines.append(
            [name, *(format_value(line[c], "peak_rss") if c in line else "-" for c in systems)]
        )
    return _align(lines)


def _ordered_ratios(rows: list[Row]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in ratios(row):
            if name not in names:
                names.append(name)
    return names


def _align(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def verdict_lines(verdicts: list[Verdict]) -> str:
    """One line per target: outcome, what was compared, measured value against the limit."""
    lines = []
    for v in verdicts:
        if v.unit == "x":
            measured = "-" if v.value is None else f"{v.value:.2f}x"
            limit = f"<= {v.limit:.2f}x"
        else:
            metric = "peak_rss" if v.unit == "B" else "time"
            measured = "-" if v.value is None else format_value(v.value, metric)
            limit = "<= " + format_value(v.limit, metric)
        lines.append(f"{v.outcome:<4}  {v.label:<52} {measured:>10}  ({limit})")
    return "\n".join(lines)


def text_report(
    rows: list[Row], verdicts: list[Verdict], skipped: list[str], meta: dict[str, Any]
) -> str:
    """The whole stdout report."""
    parts = [
        f"layerfs benchmarks  {meta['date']}  commit {meta['commit'][:12]}  "
        f"{meta['host']}  kernel {meta['kernel']}  reps {meta['reps']}"
        + ("  (quick: sizes too small for meaningful numbers)" if meta["quick"] else ""),
        "medians; ±: (max - min) / median over the repetitions; ratios of medians",
    ]
    for text in (table(rows, False), rss_table(rows), table(rows, True)):
        if text:
            parts += ["", text]
    if verdicts:
        n_pass = sum(v.outcome == "PASS" for v in verdicts)
        n_miss = sum(v.outcome == "MISS" for v in verdicts)
        parts += [
            "",
            f"targets: {n_pass} PASS, {n_miss} MISS, {len(verdicts) - n_pass - n_miss} n/a",
        ]
        parts.append(verdict_lines(verdicts))
    if skipped:
        parts += ["", "skipped:"] + [f"  {s}" for s in skipped]
    return "\n".join(parts) + "\n"


def json_document(
    rows: list[Row],
    verdicts: list[Verdict],
    samples: list[Sample],
    skipped: list[str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Everything of a run, raw samples included, as one JSON-serialisable document."""
    summary = []
    for row in rows:
        w, variant, state, metric = row.key
        summary.append(
            {
                "workload": w,
                "variant": variant,
                "state": state,
                "metric": metric,
                "systems": {k: asdict(s) | {"spread": s.spread} for k, s in row.stats.items()},
                "ratios": ratios(row),
            }
        )
    return {
        "metadata": meta,
        "summary": summary,
        "targets": [asdict(v) | {"outcome": v.outcome} for v in verdicts],
        "skipped": skipped,
        "samples": [asdict(s) for s in samples],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def write_raw(directory: Path, samples: list[Sample], meta: dict[str, Any], report: str) -> None:
    """``samples.csv``, ``metadata.json`` and the printed ``report.txt`` in *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "samples.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["workload", "variant", "state", "metric", "system", "rep", "value"])
        for s in samples:
            writer.writerow(
                [s.workload, s.variant, s.state, s.metric, s.system, s.rep, repr(s.value)]
            )
    (directory / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "report.txt").write_text(report)
