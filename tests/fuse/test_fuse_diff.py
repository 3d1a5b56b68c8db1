"""Differential: generated operation sequences through the FUSE mount and kernel overlayfs.

The same generated lowers are built twice; kernel overlayfs and a ``layerfs mount`` (FUSE)
each get their own copy, an empty upper and a work dir. The same sequence of plain ``os``
calls runs on both mounts. Per-operation outcomes, merged views and normalised upper
directories must agree, except for the intended differences in
:mod:`tests.differential.allowlist`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, note

from fuse_mount import mountinfo
from tests.differential import ops as O
from tests.differential import trees as T
from tests.differential.allowlist import accepted, mask_dir_nlink, reconcile_link_copy_up
from tests.differential.configs import BASELINE
from tests.differential.conftest import KernelOverlay
from tests.differential.conftest import kernel_overlay as kernel_overlay  # the fixture
from tests.fuse.conftest import force_unmount, run_cli
from tests.property import layers as L
from tests.property.model import flatten
from tests.property.profiles import oracle_settings

pytestmark = [pytest.mark.root, pytest.mark.kernel, pytest.mark.fuse, pytest.mark.slow]


def _fuse_run(
    base: Path, layers: list[L.Layer], sequence: list[O.Op], since: int
) -> tuple[list[O.Outcome], T.Snapshot, T.Snapshot]:
    lowers = L.build_layers(base, layers, prefix="flower")
    upper, work, mnt = base / "fupper", base / "fwork", base / "fmnt"
    for d in (upper, work, mnt):
        d.mkdir()
    lowerdir = ":".join(str(p) for p in lowers)
    run_cli("mount", "-o", f"lowerdir={lowerdir},upperdir={upper},workdir={work}", str(mnt))
    try:
        outcomes = O.run_ops(mnt, sequence)
        merged = T.snapshot_dir(mnt, since)
    finally:
        if run_cli("umount", str(mnt), check=False).returncode != 0:
            force_unmount(mnt)
        assert mountinfo.find(mnt) is None
    return outcomes, merged, T.snapshot_dir(upper, since, merged=False)


def _kernel_run(
    overlay: KernelOverlay, base: Path, layers: list[L.Layer], sequence: list[O.Op], since: int
) -> tuple[list[O.Outcome], T.Snapshot, T.Snapshot]:
    lowers = L.build_layers(base, layers, prefix="klower")
    upper, work, mnt = base / "kupper", base / "kwork", base / "kmnt"
    with overlay.mounted(lowers, upper, work, mnt, BASELINE.kernel):
        outcomes = O.run_ops(mnt, sequence)
        merged = T.snapshot_dir(mnt, since)
    return outcomes, merged, T.snapshot_dir(upper, since, merged=False)


@pytest.mark.timeout(900)
@oracle_settings(default=10, ci=100, deep=1000)
@given(
    layers=L.layer_stacks(L.KERNEL_STYLES, hard_links=BASELINE.hard_links),
    sequence=O.generate(),
)
def test_fuse_mount_matches_kernel_overlayfs(
    kernel_overlay: KernelOverlay, tmp_path: Path, layers: list[L.Layer], sequence: list[O.Op]
) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        since = T.OLD_CUTOFF_NS
        k_out, k_merged, k_upper = _kernel_run(kernel_overlay, base, layers, sequence, since)
        f_out, f_merged, f_upper = _fuse_run(base, layers, sequence, since)
        note("\n".join(f"{i:2} {op} -> {k_out[i]} | {f_out[i]}" for i, op in enumerate(sequence)))
        for op, kernel, fuse in zip(sequence, k_out, f_out, strict=True):
            assert kernel == fuse or accepted(op, kernel, fuse), f"{op}: {kernel} != {fuse}"
        lower_view = flatten(layers)
        kernel_upper = T.normalise_upper(k_upper, lower_view)
        fuse_upper = T.normalise_upper(f_upper, lower_view)
        reconciled = reconcile_link_copy_up(kernel_upper, fuse_upper, lower_view)
        assert T.without_root(kernel_upper).differences(T.without_root(reconciled)) == []
        holders = {p for p, n in fuse_upper.nodes.items() if n.kind == "dir"} - set(
            reconciled.nodes
        )
        want, got = T.without_root(k_merged), T.without_root(f_merged)
        assert want.differences(mask_dir_nlink(got, want, holders)) == []
    finally:
        shutil.rmtree(base)
