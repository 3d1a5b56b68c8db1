"""Differential test: the same operations on kernel overlayfs, on layerfs and on the model.

For one generated stack of lowers (kernel encodings only: 0/0 character devices, trusted
opaque xattrs), one generated operation sequence, one kernel option set and one caller
(:mod:`tests.differential.configs`):

(a) kernel overlayfs runs the sequence through plain os calls on its mount, as the caller;
(b) a layerfs Stack over a copy of the same lowers runs it through its path API, as the
    caller (``Stack.as_caller`` for a user);
(c) the kernel mounts the lowers with **layerfs's upper** (with its defaults, unless layerfs
    wrote metacopy files) and must show the merged view layerfs showed.

Per-operation outcomes, merged views and (where the options allow) normalised upper
directories must agree, except for the intended differences in
:mod:`tests.differential.allowlist`. :func:`test_model_matches_kernel` holds the reference
model of the stateful test to the kernel's behaviour on the same inputs.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from layerfs import Credentials, Stack
from tests import forms
from tests.differential import ops as O
from tests.differential import trees as T
from tests.differential.allowlist import accepted, mask_dir_nlink, reconcile_link_copy_up
from tests.differential.configs import CALLERS, CONFIGS, Config
from tests.differential.conftest import KernelOverlay
from tests.property import layers as L
from tests.property.model import Model, flatten
from tests.property.profiles import oracle_settings

pytestmark = [pytest.mark.root, pytest.mark.kernel]


@dataclass
class KernelRun:
    outcomes: list[O.Outcome]
    merged: T.Snapshot
    upper: T.Snapshot


def _kernel_run(
    overlay: KernelOverlay,
    base: Path,
    scenario: tuple[list[L.Layer], list[O.Op]],
    config: Config,
    creds: Credentials | None,
) -> KernelRun:
    layers, sequence = scenario
    since = T.OLD_CUTOFF_NS
    lowers = L.build_layers(base, layers, prefix="klower")
    upper, work, mnt = base / "kupper", base / "kwork", base / "kmnt"
    with overlay.mounted(lowers, upper, work, mnt, config.kernel):
        outcomes = O.run_ops_as(mnt, sequence, creds)
        merged = T.snapshot_dir(mnt, since)
    return KernelRun(outcomes, merged, T.snapshot_dir(upper, since, merged=False))


def _describe(sequence: list[O.Op], *columns: list[O.Outcome]) -> str:
    rows = [
        f"{i:2} {op}  ->  {' | '.join(str(c[i]) for c in columns)}" for i, op in enumerate(sequence)
    ]
    return "\n".join(rows)


def _scratch(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


@pytest.mark.timeout(900)
@oracle_settings(default=50, ci=500, deep=5000)
@given(scenario=O.scenarios())
def _model_matches_kernel(
    kernel_overlay: KernelOverlay, tmp_path: Path, scenario: tuple[list[L.Layer], list[O.Op]]
) -> None:
    layers, sequence = scenario
    base = _scratch(tmp_path)
    try:
        model = Model(layers)
        initial = T.snapshot_model(flatten(layers))
        expected = O.run_model(model, sequence)
        with_kernel = _kernel_run(kernel_overlay, base, scenario, CONFIGS["index"], None)
        note(_describe(sequence, with_kernel.outcomes, expected))
        assert with_kernel.outcomes == expected
        want = T.snapshot_model(model.nodes)
        got = T.as_model_sees(T.without_root(with_kernel.merged), want)
        assert T.without_root(want).differences(got) == [], initial
    finally:
        shutil.rmtree(base)


@dataclass
class LayerfsRun:
    outcomes: list[O.Outcome]
    merged: T.Snapshot
    upper: T.Snapshot
    lowers: list[Path]
    upper_dir: Path


def _layerfs_run(
    base: Path,
    scenario: tuple[list[L.Layer], list[O.Op]],
    config: Config,
    creds: Credentials | None,
) -> LayerfsRun:
    layers, sequence = scenario
    since = T.OLD_CUTOFF_NS
    lowers = L.build_layers(base, layers, prefix="llower")
    upper, work = base / "lupper", base / "lwork"
    upper.mkdir()
    work.mkdir()
    with Stack([str(p) for p in lowers], str(upper), str(work), options=config.options) as stack:
        outcomes = O.run_stack(stack if creds is None else stack.as_caller(creds), sequence)
        merged = T.snapshot_stack(stack, since)
    return LayerfsRun(outcomes, merged, T.snapshot_dir(upper, since, merged=False), lowers, upper)


def _outcome_differences(
    sequence: list[O.Op], kernel: list[O.Outcome], layerfs: list[O.Outcome]
) -> list[str]:
    return [
        f"{i}: {op}: kernel {k}, layerfs {got}"
        for i, (op, k, got) in enumerate(zip(sequence, kernel, layerfs, strict=True))
        if k != got and accepted(op, k, got) is None
    ]


def compare_runs(
    config: Config,
    layers: list[L.Layer],
    kernel: KernelRun,
    ours_merged: T.Snapshot,
    ours_upper: T.Snapshot,
) -> None:
    """Assert that the uppers (where comparable) and the merged views agree.

    Directory link counts are compared where both sides made a directory the same way: the
    link copy-up (see the allowlist) and, with ``redirect_dir=on``, a directory rename (the
    kernel keeps it merged, layerfs copies it whole) make them differ legitimately.
    """
    lower_view = flatten(layers)
    holders: set[str] = set()
    if config.compare_upper:
        want_upper = T.normalise_upper(kernel.upper, lower_view)
        got_upper = T.normalise_upper(ours_upper, lower_view)
        reconciled = reconcile_link_copy_up(want_upper, got_upper, lower_view)
        assert T.without_root(want_upper).differences(T.without_root(reconciled)) == []
        holders = {p for p, n in got_upper.nodes.items() if n.kind == "dir"}
        holders -= set(reconciled.nodes)
    got = T.without_root(ours_merged)
    want = T.without_root(kernel.merged)
    if not config.compare_upper:
        holders = {p for p, n in got.nodes.items() if n.kind == "dir"}
    assert want.differences(mask_dir_nlink(got, want, holders)) == []


def read_back(
    overlay: KernelOverlay, base: Path, config: Config, lowers: list[Path], upper: Path
) -> T.Snapshot:
    """What the kernel shows over layerfs's upper, mounted the way *config* says."""
    target, work = base / "readback", base / "readback-work"
    with overlay.mounted(lowers, upper, work, target, config.readback):
        return T.without_root(T.snapshot_dir(target, T.OLD_CUTOFF_NS))


def _scenarios_for(config: Config) -> st.SearchStrategy[tuple[list[L.Layer], list[O.Op]]]:
    return O.scenarios(hard_links=config.hard_links)


def _check_layerfs(
    overlay: KernelOverlay,
    tmp_path: Path,
    config: Config,
    caller: str,
    scenario: tuple[list[L.Layer], list[O.Op]],
) -> None:
    layers, sequence = scenario
    creds = CALLERS[caller]
    base = _scratch(tmp_path)
    try:
        kernel = _kernel_run(overlay, base, scenario, config, creds)
        ours = _layerfs_run(base, scenario, config, creds)
        note(_describe(sequence, kernel.outcomes, ours.outcomes))
        assert _outcome_differences(sequence, kernel.outcomes, ours.outcomes) == []
        compare_runs(config, layers, kernel, ours.merged, ours.upper)
        readback = read_back(overlay, base, config, ours.lowers, ours.upper_dir)
        assert readback.differences(T.without_root(ours.merged)) == []
    finally:
        shutil.rmtree(base)


def _case(config_name: str, caller: str):  # type: ignore[no-untyped-def]
    config = CONFIGS[config_name]

    @pytest.mark.timeout(900)
    @oracle_settings(default=25, ci=200, deep=3000)
    @given(scenario=_scenarios_for(config))
    def test(
        kernel_overlay: KernelOverlay,
        tmp_path: Path,
        scenario: tuple[list[L.Layer], list[O.Op]],
    ) -> None:
        _check_layerfs(kernel_overlay, tmp_path, config, caller, scenario)

    test.__doc__ = f"layerfs's core as {caller}, kernel with the {config_name} options."
    return test


if forms.ROOTLESS:  # one configuration and one caller without privilege (tests.forms)
    test_layerfs_matches_kernel_rootless_user = _case("rootless", "user")
else:
    test_model_matches_kernel = _model_matches_kernel  # the model is root's
    test_layerfs_matches_kernel_defaults_root = _case("defaults", "root")
    test_layerfs_matches_kernel_defaults_user = _case("defaults", "user")
    test_layerfs_matches_kernel_index_root = _case("index", "root")
    test_layerfs_matches_kernel_index_user = _case("index", "user")
    test_layerfs_matches_kernel_features_root = _case("features", "root")
    test_layerfs_matches_kernel_features_user = _case("features", "user")
