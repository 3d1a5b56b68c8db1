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
from tests.differential.configs import CALLERS, CONFIGS, Config
from tests.differential.conftest import KernelOverlay
from tests.differential.runs import (
    Scenario,
    compare_runs,
    describe,
    kernel_run,
    outcome_differences,
    read_back,
)
from tests.property import layers as L
from tests.property.model import Model, flatten
from tests.property.profiles import oracle_settings

pytestmark = [pytest.mark.root, pytest.mark.kernel]


def _scratch(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


@pytest.mark.timeout(900)
@oracle_settings(default=50, ci=500, deep=5000)
@given(scenario=O.scenarios())
def _model_matches_kernel(
    kernel_overlay: KernelOverlay, tmp_path: Path, scenario: Scenario
) -> None:
    layers, sequence = scenario
    base = _scratch(tmp_path)
    try:
        model = Model(layers)
        initial = T.snapshot_model(flatten(layers))
        expected = O.run_model(model, sequence)
        with_kernel = kernel_run(kernel_overlay, base, scenario, CONFIGS["index"], None)
        note(describe(sequence, with_kernel.outcomes, expected))
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
    scenario: Scenario,
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


def _scenarios_for(config: Config) -> st.SearchStrategy[Scenario]:
    return O.scenarios(hard_links=config.hard_links)


def _check_layerfs(
    overlay: KernelOverlay,
    tmp_path: Path,
    config: Config,
    caller: str,
    scenario: Scenario,
) -> None:
    layers, sequence = scenario
    creds = CALLERS[caller]
    base = _scratch(tmp_path)
    try:
        kernel = kernel_run(overlay, base, scenario, config, creds)
        ours = _layerfs_run(base, scenario, config, creds)
        note(describe(sequence, kernel.outcomes, ours.outcomes))
        assert outcome_differences(sequence, kernel.outcomes, ours.outcomes) == []
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
        scenario: Scenario,
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
