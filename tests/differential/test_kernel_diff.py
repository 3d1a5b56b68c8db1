"""Differential test: the same operations on kernel overlayfs, on layerfs and on the model.

For one generated stack of lowers (kernel encodings only: 0/0 character devices, trusted
opaque xattrs) and one generated operation sequence:

(a) kernel overlayfs (``index=on,redirect_dir=off,metacopy=off``) runs the sequence through
    plain os calls on its mount;
(b) a layerfs Stack over a copy of the same lowers runs it through its path API;
(c) the kernel (``metacopy=on``) mounts the lowers with **layerfs's upper** and must show the
    merged view layerfs showed, so an upper written by layerfs is a valid overlayfs upper.

Per-operation outcomes, merged views and normalised upper directories must agree, except for
the intended differences in :mod:`tests.differential.allowlist`. :func:`test_model_matches_kernel`
holds the reference model of the stateful test to the kernel's behaviour on the same inputs.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, note

from layerfs import Stack
from tests.differential import ops as O
from tests.differential import trees as T
from tests.differential.allowlist import accepted, mask_dir_nlink, reconcile_link_copy_up
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
    overlay: KernelOverlay, base: Path, layers: list[L.Layer], sequence: list[O.Op], since: int
) -> KernelRun:
    lowers = L.build_layers(base, layers, prefix="klower")
    upper, work, mnt = base / "kupper", base / "kwork", base / "kmnt"
    with overlay.mounted(lowers, upper, work, mnt, overlay.compare_options):
        outcomes = O.run_ops(mnt, sequence)
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
@oracle_settings(default=50, ci=800, deep=5000)
@given(scenario=O.scenarios())
def test_model_matches_kernel(
    kernel_overlay: KernelOverlay, tmp_path: Path, scenario: tuple[list[L.Layer], list[O.Op]]
) -> None:
    layers, sequence = scenario
    base = _scratch(tmp_path)
    try:
        since = T.OLD_CUTOFF_NS
        model = Model(layers)
        initial = T.snapshot_model(flatten(layers))
        expected = O.run_model(model, sequence)
        with_kernel = _kernel_run(kernel_overlay, base, layers, sequence, since)
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


def _layerfs_run(base: Path, layers: list[L.Layer], sequence: list[O.Op], since: int) -> LayerfsRun:
    lowers = L.build_layers(base, layers, prefix="llower")
    upper, work = base / "lupper", base / "lwork"
    upper.mkdir()
    work.mkdir()
    with Stack([str(p) for p in lowers], str(upper), str(work)) as stack:
        outcomes = O.run_stack(stack, sequence)
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


@pytest.mark.timeout(900)
@oracle_settings(default=50, ci=800, deep=5000)
@given(scenario=O.scenarios())
def test_layerfs_matches_kernel(
    kernel_overlay: KernelOverlay, tmp_path: Path, scenario: tuple[list[L.Layer], list[O.Op]]
) -> None:
    layers, sequence = scenario
    base = _scratch(tmp_path)
    since = T.OLD_CUTOFF_NS
    try:
        kernel = _kernel_run(kernel_overlay, base, layers, sequence, since)
        ours = _layerfs_run(base, layers, sequence, since)
        note(_describe(sequence, kernel.outcomes, ours.outcomes))
        assert _outcome_differences(sequence, kernel.outcomes, ours.outcomes) == []
        # (a) vs (b): the upper directories on disk, normalised
        lower_view = flatten(layers)
        want_upper = T.normalise_upper(kernel.upper, lower_view)
        ours_upper = T.normalise_upper(ours.upper, lower_view)
        got_upper = reconcile_link_copy_up(want_upper, ours_upper, lower_view)
        assert T.without_root(want_upper).differences(T.without_root(got_upper)) == []
        # ... and the merged views
        holders = {p for p, n in ours_upper.nodes.items() if n.kind == "dir"} - set(got_upper.nodes)
        got = T.without_root(ours.merged)
        want = T.without_root(kernel.merged)
        assert want.differences(mask_dir_nlink(got, want, holders)) == []
        # (c) the kernel reads layerfs's upper back as the view layerfs showed
        target, work = base / "readback", base / "readback-work"
        with kernel_overlay.mounted(
            ours.lowers, ours.upper_dir, work, target, kernel_overlay.readback_options
        ):
            readback = T.snapshot_dir(target, since)
        assert T.without_root(readback).differences(got) == []
    finally:
        shutil.rmtree(base)
