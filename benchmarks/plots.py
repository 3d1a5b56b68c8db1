"""PNG plots of a run: ratios per workload, and lookup cost against stack depth."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results import Row, ratios

PLOTTED_RATIOS = (
    "layerfs/fuse-overlayfs",
    "layerfs/kernel",
    "kernel/plain",
    "fuse-overlayfs/plain",
    "layerfs/plain",
    "layerfs/umoci",
    "layerfs/tar",
    "layerfs/tar+zstd",
)


def write_plots(rows: list[Row], directory: Path) -> list[Path]:
    """Write ``ratios.png`` and ``lookup-depth.png`` (when there is data); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("ratios.png", _ratios), ("lookup-depth.png", _depth)):
        path = directory / name
        if draw(rows, path):
            written.append(path)
    return written


def _ratios(rows: list[Row], path: Path) -> bool:
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.key[3] in ("time", "time_per_op")]
    labels = [" ".join(p for p in (r.key[0], r.key[1], r.key[2]) if p) for r in timed]
    series = {n: [ratios(r).get(n) for r in timed] for n in PLOTTED_RATIOS}
    series = {n: v for n, v in series.items() if any(x is not None for x in v)}
    if not timed or not series:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(timed) * len(series) ** 0.5 + 2))
    height = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ys = [n + i * height for n in range(len(timed))]
        ax.barh(ys, [v if v is not None else 0.0 for v in values], height, label=name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([n + 0.4 - height / 2 for n in range(len(timed))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio of medians (log scale; < 1: numerator faster)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _depth(rows: list[Row], path: Path) -> bool:
    import matplotlib.pyplot as plt

    points: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in rows:
        w, variant, state, metric = row.key
        if w != "lookup" or metric != "time_per_op":
            continue
        depth = int(variant.split("=", 1)[1])
        for system, stat in row.stats.items():
            points.setdefault((system, state), []).append((depth, stat.median * 1e6))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"cold": ":", "warm": "--", "fresh": "-"}
    systems = sorted({system for system, _ in points})
    for (system, state), values in sorted(points.items()):
        values.sort()
        ax.plot(
            [d for d, _ in values],
            [c for _, c in values],
            styles.get(state, "-"),
            color=f"C{systems.index(system)}",
            marker="o",
            label=f"{system} {state}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("lower layers in the stack")
    ax.set_ylabel("median cost per lookup (µs)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
