"""Command line of the benchmark harness: ``python -m benchmarks.run [--quick] [...]``.

Builds the generated stacks once, runs the selected workloads on every available system
(interleaved, several repetitions), prints the table and the targets, and writes the raw
samples with their metadata under ``benchmarks/results/<date>-<host>/``. Every mount is
undone in ``finally`` blocks, also on Ctrl-C or SIGTERM; scratch trees are removed unless
``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import library, meta, plots, report, stacks
from benchmarks.cache import drop_reason
from benchmarks.config import DEFAULT_SEED, FULL, QUICK, STATES, SYSTEMS, RunConfig
from benchmarks.mounts import ALL_SYSTEMS, System, detach_under
from benchmarks.results import Recorder, summarize
from benchmarks.schedule import Runner
from benchmarks.targets import evaluate
from benchmarks.workloads import WORKLOADS

WORKLOAD_NAMES = tuple(w.name for w in WORKLOADS) + library.LIBRARY_WORKLOADS
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}"
            )
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small stacks, one repetition (smoke test)")
    p.add_argument(
        "--reps", type=int, help="repetitions per workload and system (default 5, quick 1)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where stacks are built and reused (default: a new temporary dir)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory and scratch trees")
    p.add_argument(
        "--only",
        type=_names(WORKLOAD_NAMES),
        default=WORKLOAD_NAMES,
        metavar="WORKLOAD[,..]",
        help=f"workloads to run: {', '.join(WORKLOAD_NAMES)}",
    )
    p.add_argument(
        "--systems",
        type=_names(SYSTEMS),
        default=SYSTEMS,
        metavar="SYSTEM[,..]",
        help=f"systems to compare: {', '.join(SYSTEMS)}",
    )
    p.add_argument(
        "--states",
        type=_names(STATES),
        default=STATES,
        metavar="STATE[,..]",
        help="cache states of the read workloads: cold, warm, fresh",
    )
    p.add_argument(
        "--pass-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="kill a FUSE daemon whose mount keeps one timed pass busy this long (default 1800)",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the stack generator")
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="write summary, targets and samples as JSON"
    )
    p.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="parent of the <date>-<host> raw results directory (default: benchmarks/results)",
    )
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def make_config(args: argparse.Namespace) -> RunConfig:
    temporary = args.workdir is None
    workdir = (
        Path(tempfile.mkdtemp(prefix="layerfs-bench-")) if temporary else args.workdir.resolve()
    )
    workdir.mkdir(parents=True, exist_ok=True)
    return RunConfig(
        sizes=QUICK if args.quick else FULL,
        quick=args.quick,
        reps=args.reps or (1 if args.quick else 5),
        seed=args.seed,
        workdir=workdir,
        workdir_is_temporary=temporary,
        keep=args.keep,
        workloads=tuple(n for n in WORKLOAD_NAMES if n in args.only),
        systems=tuple(n for n in SYSTEMS if n in args.systems),
        states=tuple(s for s in STATES if s in args.states),
        pass_timeout=args.pass_timeout,
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def available_systems(config: RunConfig, recorder: Recorder) -> list[System]:
    """The selected systems that can run here; the others are skipped with their reason."""
    chosen = []
    for system in ALL_SYSTEMS:
        if system.name not in config.systems:
            continue
        reason = system.unavailable_reason()
        if reason:
            recorder.skip(f"{system.name}: {reason}")
        else:
            chosen.append(system)
    return chosen


def build_stacks(config: RunConfig) -> dict[str, stacks.BuiltStack]:
    needed = {w.stack for w in WORKLOADS if w.name in config.workloads}
    if set(config.workloads) & set(library.LIBRARY_WORKLOADS):
        needed.add("wide")
    built = {}
    for name in stacks.STACK_NAMES:
        if name in needed:
            print(f"building stack {name} in {config.workdir}", file=sys.stderr, flush=True)
            built[name] = stacks.build(name, config.sizes, config.seed, config.workdir)
    return built


def measure(config: RunConfig, recorder: Recorder, scratch: Path) -> None:
    """Build the stacks and run every selected workload."""
    systems = available_systems(config, recorder)
    reason = drop_reason()
    if reason and "cold" in config.states:
        recorder.skip(reason)
        config = _replace_states(config, tuple(s for s in config.states if s != "cold"))
    built = build_stacks(config)
    runner = Runner(config, systems, built, recorder, scratch)
    for workload in WORKLOADS:
        if workload.name in config.workloads:
            print(f"workload {workload.name}", file=sys.stderr, flush=True)
            runner.run(workload)
    for name in library.LIBRARY_WORKLOADS:
        if name in config.workloads:
            print(f"workload {name}", file=sys.stderr, flush=True)
            library.run_library(name, config, built["wide"], scratch / "library", recorder)


def _replace_states(config: RunConfig, states: tuple[str, ...]) -> RunConfig:
    return replace(config, states=states)


def cleanup(config: RunConfig, scratch: Path) -> None:
    """Unmount anything left under the work directory, then remove what is not to be kept."""
    detach_under(config.workdir)
    if config.keep:
        print(f"kept {config.workdir}", file=sys.stderr)
        return
    target = config.workdir if config.workdir_is_temporary else scratch
    shutil.rmtree(target, ignore_errors=True)


def results_dir(parent: Path, info: dict[str, Any], quick: bool) -> Path:
    """``<parent>/<date>-<host>[-quick]``, with ``-2``, ``-3``... if that already exists."""
    base = f"{info['date']}-{info['host']}" + ("-quick" if quick else "")
    path, n = parent / base, 1
    while path.exists():
        n += 1
        path = parent / f"{base}-{n}"
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    info = meta.collect({k: str(v) for k, v in vars(args).items()})
    recorder = Recorder()
    interrupted = False
    config = make_config(args)
    scratch = config.workdir / "scratch"
    try:
        measure(config, recorder, scratch)
    except KeyboardInterrupt:
        interrupted = True
        recorder.skip("run interrupted: results are partial")
    finally:
        cleanup(config, scratch)
    info |= {"quick": config.quick, "reps": config.reps, "seed": config.seed}
    info |= {"sizes": asdict(config.sizes), "load_average_end": list(os.getloadavg())}
    rows = summarize(recorder.samples)
    verdicts = evaluate(rows)
    text = report.text_report(rows, verdicts, recorder.skipped, info)
    print(text, end="")
    raw = results_dir(args.results, info, config.quick)
    report.write_raw(raw, recorder.samples, info, text)
    print(f"raw results: {raw}", file=sys.stderr)
    if args.json:
        doc = report.json_document(rows, verdicts, recorder.samples, recorder.skipped, info)
        report.write_json(args.json, doc)
    for directory in (raw, args.plots):
        if directory is not None:
            for path in plots.write_plots(rows, directory):
                print(f"plot: {path}", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
