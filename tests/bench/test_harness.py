"""Unit tests of the benchmark harness: layouts, statistics, targets and the report.

No mounting and no timing here; these pin down the parts whose mistakes would silently turn
into wrong numbers (a wrong merged tree, a ratio upside down, a target that cannot miss).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks import layout, meta, report, stacks
from benchmarks.config import QUICK, RunConfig
from benchmarks.mounts import Mounted, MountError, MountSpec, System, mounts_under, overlay_options
from benchmarks.results import Recorder, Row, Sample, Stat, ratios, summarize
from benchmarks.run import results_dir
from benchmarks.schedule import Runner, Watchdog, rotate
from benchmarks.targets import evaluate
from benchmarks.workloads import Workload, WorkloadError
from layerfs.whiteout import OPAQUE_VALUE, UpperFormat, is_whiteout_stat


def test_merge_applies_opaque_then_whiteouts_then_new_entries() -> None:
    f = layout.FileSpec(1, 1)
    g = layout.FileSpec(2, 2)
    bottom = layout.LayerSpec(files={"a/x": f, "a/y": f, "b/z": f, "c/w": f})
    top = layout.LayerSpec(files={"a/x": g, "b/new": g}, whiteouts={"a/y", "c"}, opaque={"b"})
    merged = layout.merge([bottom, top])
    assert merged.files == {"a/x": (1, g), "b/new": (1, g)}
    assert merged.dirs == {"a", "b"}


def test_wide_layout_is_seeded_and_has_every_feature() -> None:
    first = layout.wide(QUICK, 7)
    again = layout.wide(QUICK, 7)
    other = layout.wide(QUICK, 8)
    assert [lay.files for lay in first] == [lay.files for lay in again]
    assert [lay.files for lay in first] != [lay.files for lay in other]
    assert len(first) == QUICK.wide_layers
    assert sum(len(lay.opaque) for lay in first) == 1
    assert any(lay.whiteouts for lay in first[1:])
    overridden = set(first[0].files) & set().union(*(lay.files for lay in first[1:]))
    assert overridden
    total = len(layout.merge(first).files)
    assert 0 < total < sum(len(lay.files) for lay in first)


def test_deep_targets_live_in_the_bottom_layer_only() -> None:
    layers, targets = layout.deep(QUICK)
    assert len(layers) == max(QUICK.deep_depths)
    assert set(targets) <= set(layers[0].files)
    assert all(not set(targets) & set(lay.files) for lay in layers[1:])
    assert all(lay.dirs == layers[0].dirs for lay in layers)


@pytest.mark.root
def test_build_writes_layers_whiteouts_opaque_and_flat(tmp_path: Path) -> None:
    built = stacks.build("wide", QUICK, 3, tmp_path)
    merged = layout.merge(layout.wide(QUICK, 3))
    flat_files = {
        str(Path(d, n).relative_to(built.flat))
        for d, _, names in os.walk(built.flat)
        for n in names
    }
    assert flat_files == set(merged.files) == set(built.files)
    for index, layer in enumerate(layout.wide(QUICK, 3)):
        for path in layer.whiteouts:
            assert is_whiteout_stat(os.lstat(built.layers[index] / path))
        for path in layer.opaque:
            value = os.getxattr(built.layers[index] / path, UpperFormat().opaque_xattr)
            assert value == OPAQUE_VALUE
    some = built.files[0]
    index, spec = merged.files[some]
    assert (built.flat / some).read_bytes() == (built.layers[index] / some).read_bytes()
    assert (built.flat / some).stat().st_size == spec.size


@pytest.mark.root
def test_build_reuses_a_matching_stack_and_rebuilds_another(tmp_path: Path) -> None:
    stacks.build("huge", QUICK, 1, tmp_path)
    stamp = tmp_path / "stacks" / "huge" / "stamp.json"
    marker = tmp_path / "stacks" / "huge" / "layers" / "0" / "marker"
    marker.write_text("")
    stacks.build("huge", QUICK, 1, tmp_path)
    assert marker.exists()
    stacks.build("huge", QUICK, 2, tmp_path)
    assert not marker.exists()
    assert stamp.exists()


def test_rotate_puts_every_system_in_every_position() -> None:
    items = ["a", "b", "c"]
    orders = [rotate(items, rep) for rep in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert rotate([], 4) == []


def _sample(
    system: str, value: float, rep: int = 0, workload: str = "stat", state: str = "warm"
) -> Sample:
    return Sample(workload, "", state, "time", system, rep, value)


def test_summary_takes_medians_and_ratios_divide_medians() -> None:
    samples = [_sample("layerfs", v, i) for i, v in enumerate((3.0, 1.0, 2.0))]
    samples += [_sample("fuse-overlayfs", v, i) for i, v in enumerate((4.0, 4.0, 8.0))]
    (row,) = summarize(samples)
    assert row.stats["layerfs"] == Stat(2.0, 1.0, 3.0, 3)
    assert row.stats["layerfs"].spread == pytest.approx(1.0)
    assert ratios(row)["layerfs/fuse-overlayfs"] == pytest.approx(0.5)
    assert "layerfs/kernel" not in ratios(row)


def _outcomes(rows: list[Row]) -> dict[str, str]:
    return {v.label: v.outcome for v in evaluate(rows)}


def test_targets_pass_miss_and_na() -> None:
    rows = summarize(
        [
            _sample("layerfs", 1.0, state="fresh"),
            _sample("fuse-overlayfs", 2.0, state="fresh"),
            _sample("layerfs", 3.0, workload="walk", state="cold"),
            _sample("fuse-overlayfs", 2.0, workload="walk", state="cold"),
            _sample("kernel", 2.0, workload="read"),
            _sample("layerfs", 1.0, workload="unlink", state="fresh"),
            _sample("fuse-overlayfs", 1.0, workload="unlink", state="fresh"),
        ]
    )
    outcomes = _outcomes(rows)
    assert outcomes["stat fresh: layerfs/fuse-overlayfs"] == "PASS"  # 0.5x: at the limit
    assert outcomes["stat fresh: layerfs/kernel"] == "n/a"
    assert outcomes["walk cold: layerfs/fuse-overlayfs"] == "MISS"
    assert outcomes["read warm: layerfs/kernel"] == "n/a"
    assert outcomes["unlink fresh: layerfs/fuse-overlayfs"] == "PASS"


def test_lookup_target_compares_deepest_with_depth_one() -> None:
    samples = [
        Sample("lookup", f"depth={d}", "fresh", "time_per_op", "layerfs", 0, cost)
        for d, cost in ((1, 1.0), (2, 1.2), (8, 1.6))
    ]
    (verdict,) = [v for v in evaluate(summarize(samples)) if "depth 8" in v.label]
    assert verdict.value == pytest.approx(1.6)
    assert verdict.outcome == "MISS"


def test_rss_target_uses_the_worst_workload() -> None:
    samples = [
        Sample("stat", "", "warm", "peak_rss", "layerfs", 0, 10 * 2**20),
        Sample("read", "", "fresh", "peak_rss", "layerfs", 0, 70 * 2**20),
    ]
    (verdict,) = [v for v in evaluate(summarize(samples)) if "RSS" in v.label]
    assert verdict.outcome == "MISS"


def test_overlay_options_name_lowers_relative_to_their_parent(tmp_path: Path) -> None:
    spec = MountSpec((tmp_path / "2", tmp_path / "1", tmp_path / "0"), tmp_path / "flat")
    assert overlay_options(spec) == ("lowerdir=2:1:0", tmp_path)
    rw = MountSpec((tmp_path / "a", tmp_path / "b" / "c"), tmp_path, tmp_path / "u", tmp_path / "w")
    options, cwd = overlay_options(rw)
    assert cwd is None
    assert (
        options
        == f"lowerdir={tmp_path}/a:{tmp_path}/b/c,upperdir={tmp_path}/u,workdir={tmp_path}/w"
    )


def test_table_shows_medians_ratios_and_targets() -> None:
    rows = summarize(
        [_sample("layerfs", 0.002, state="cold"), _sample("fuse-overlayfs", 0.004, state="cold")]
    )
    text = report.table(rows, library=False)
    assert "2 ms" in text and "4 ms" in text
    assert "0.50" in text
    lines = report.verdict_lines(evaluate(rows))
    assert lines.startswith("PASS")


def test_results_dir_gets_a_suffix_instead_of_overwriting(tmp_path: Path) -> None:
    info = {"date": "2024-01-02", "host": "h"}
    first = results_dir(tmp_path, info, quick=False)
    assert first == tmp_path / "2024-01-02-h"
    first.mkdir()
    assert results_dir(tmp_path, info, quick=False) == tmp_path / "2024-01-02-h-2"
    assert results_dir(tmp_path, info, quick=True) == tmp_path / "2024-01-02-h-quick"


def test_nothing_is_mounted_under_a_fresh_directory(tmp_path: Path) -> None:
    assert mounts_under(tmp_path) == []
    assert Path("/") in mounts_under(Path("/"))
    assert stat.S_ISDIR(os.stat(tmp_path).st_mode)


class _FakeSystem(System):
    """Mounts nothing; logs every mount so the cycle's shape can be checked."""

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail

    @contextmanager
    def mount(self, spec: MountSpec, target: Path) -> Iterator[Mounted]:
        self.log.append(f"mount {self.name}")
        if self.fail:
            raise MountError("no such thing")
        yield Mounted(spec.flat)


def _runner(tmp_path: Path, systems: list[System], states: tuple[str, ...]) -> Runner:
    flat = tmp_path / "flat"
    flat.mkdir()
    stack = stacks.BuiltStack("wide", tmp_path, (flat,), flat, (), (), ())
    config = RunConfig(QUICK, True, 2, 1, tmp_path, False, False, ("stat",), (), states)
    return Runner(config, systems, {"wide": stack}, Recorder(), tmp_path / "scratch")


def _counting_workload(log: list[str]) -> Workload:
    def run(root: Path, stack: stacks.BuiltStack, sizes: object) -> int:
        log.append("pass")
        return 7

    return Workload("stat", "wide", "read", "test", run, lambda s, z: 7)


def test_cycle_runs_warm_as_a_second_pass_and_fresh_on_a_new_mount(tmp_path: Path) -> None:
    log: list[str] = []
    runner = _runner(tmp_path, [_FakeSystem("a", log), _FakeSystem("b", log)], ("warm", "fresh"))
    runner.run(_counting_workload(log))
    one_cycle = ["pass", "pass", "mount {0}", "pass"]
    assert log == [
        *(x.format("a") for x in ["mount {0}", *one_cycle]),
        *(x.format("b") for x in ["mount {0}", *one_cycle]),
        *(x.format("b") for x in ["mount {0}", *one_cycle]),
        *(x.format("a") for x in ["mount {0}", *one_cycle]),
    ]
    states = sorted((s.system, s.state, s.rep) for s in runner.recorder.samples)
    assert states == sorted(
        (system, state, rep) for system in "ab" for state in ("warm", "fresh") for rep in (0, 1)
    )
    assert not list((tmp_path / "scratch").iterdir())


def test_a_failing_system_is_reported_and_dropped_from_the_workload(tmp_path: Path) -> None:
    log: list[str] = []
    bad = _FakeSystem("bad", log, fail=True)
    runner = _runner(tmp_path, [bad, _FakeSystem("good", log)], ("fresh",))
    runner.run(_counting_workload(log))
    assert log.count("mount bad") == 1
    assert runner.recorder.skipped == ["bad failed stat: no such thing"]
    assert {s.system for s in runner.recorder.samples} == {"good"}


def test_a_wrong_count_fails_the_workload(tmp_path: Path) -> None:
    log: list[str] = []
    runner = _runner(tmp_path, [_FakeSystem("a", log)], ("warm",))
    wrong = Workload("stat", "wide", "read", "test", lambda r, s, z: 6, lambda s, z: 7)
    runner.run(wrong)
    assert runner.recorder.samples == []
    assert "counted 6, expected 7" in runner.recorder.skipped[0]


@pytest.mark.timeout(30)
def test_watchdog_kills_the_daemon_of_a_stuck_pass() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(WorkloadError, match="killed"), Watchdog(proc.pid, 0.05):
            proc.wait(timeout=20)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watchdog_leaves_a_quick_pass_alone() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with Watchdog(proc.pid, 60.0):
            pass
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_metadata_keeps_machine_paths_out() -> None:
    portable, repo = meta.portable, meta.REPO
    assert portable(str(repo / "benchmarks" / "results")) == "benchmarks/results"
    assert portable("/var/tmp/bench-work") == ".../bench-work"
    assert portable("relative/dir") == "relative/dir"
    assert portable(3) == 3
