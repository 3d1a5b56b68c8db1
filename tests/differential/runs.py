"""What the differential tests run and compare: a kernel run, and the checks on layerfs's.

Shared by the core's test (:mod:`tests.differential.test_kernel_diff`) and the FUSE mount's
(:mod:`tests.fuse.test_fuse_diff`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerfs import Credentials
from tests.differential import ops as O
from tests.differential import trees as T
from tests.differential.allowlist import accepted, mask_dir_nlink, reconcile_link_copy_up
from tests.differential.configs import Config
from tests.differential.conftest import KernelOverlay
from tests.property import layers as L
from tests.property.model import flatten

Scenario = tuple[list[L.Layer], list[O.Op]]


@dataclass
class KernelRun:
    outcomes: list[O.Outcome]
    merged: T.Snapshot
    upper: T.Snapshot


def kernel_run(
    overlay: KernelOverlay,
    base: Path,
    scenario: Scenario,
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


def outcome_differences(
    sequence: list[O.Op], kernel: list[O.Outcome], layerfs: list[O.Outcome]
) -> list[str]:
    """Operations whose outcomes differ where no allowlisted deviation explains it."""
    return [
        f"{i}: {op}: kernel {k}, layerfs {got}"
        for i, (op, k, got) in enumerate(zip(sequence, kernel, layerfs, strict=True))
        if k != got and accepted(op, k, got) is None
    ]


def describe(sequence: list[O.Op], *columns: list[O.Outcome]) -> str:
    rows = [
        f"{i:2} {op}  ->  {' | '.join(str(c[i]) for c in columns)}" for i, op in enumerate(sequence)
    ]
    return "\n".join(rows)
