"""Differential: generated operation sequences through the FUSE mount and kernel overlayfs.

The same generated lowers are built twice; kernel overlayfs and a ``layerfs mount`` (FUSE)
each get their own copy, an empty upper and a work dir. The same sequence of plain ``os``
calls runs on both mounts, as root or as a user (a forked worker with the user's uid, gid and
groups; the FUSE mount is ``allow_other`` for it), with the kernel option sets of
:mod:`tests.differential.configs`. Per-operation outcomes, merged views and normalised upper
directories must agree, except for the intended differences in
:mod:`tests.differential.allowlist`; then the kernel mounts the FUSE mount's upper and must
show what the mount showed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, note

from fuse_mount import mountinfo
from layerfs import Credentials
from layerfs.options import StackOptions, StackSpec, format_mount_options
from tests import forms
from tests.differential import ops as O
from tests.differential import trees as T
from tests.differential.configs import CALLERS, CONFIGS, Config
from tests.differential.conftest import KernelOverlay
from tests.differential.conftest import kernel_overlay as kernel_overlay  # the fixture
from tests.differential.runs import (
    Scenario,
    compare_runs,
    describe,
    kernel_run,
    outcome_differences,
    read_back,
)
from tests.fuse.conftest import force_unmount, run_cli
from tests.property import layers as L
from tests.property.profiles import oracle_settings

pytestmark = [pytest.mark.root, pytest.mark.kernel, pytest.mark.fuse, pytest.mark.slow]


def _fuse_run(
    base: Path, scenario: Scenario, config: Config, creds: Credentials | None
) -> tuple[list[O.Outcome], T.Snapshot, T.Snapshot, list[Path], Path]:
    layers, sequence = scenario
    since = T.OLD_CUTOFF_NS
    lowers = L.build_layers(base, layers, prefix="flower")
    upper, work, mnt = base / "fupper", base / "fwork", base / "fmnt"
    for d in (upper, work, mnt):
        d.mkdir()
    spec = StackSpec(tuple(lowers), upper, work, StackOptions(metacopy=config.options.metacopy))
    items = [format_mount_options(spec)]
    if creds is not None:
        items.append("allow_other")
    run_cli("mount", "-o", ",".join(items), str(mnt))
    try:
        outcomes = O.run_ops_as(mnt, sequence, creds)
        merged = T.snapshot_dir(mnt, since)
    finally:
        if run_cli("umount", str(mnt), check=False).returncode != 0:
            force_unmount(mnt)
        assert mountinfo.find(mnt) is None
    return outcomes, merged, T.snapshot_dir(upper, since, merged=False), lowers, upper


def _check_fuse(
    overlay: KernelOverlay, tmp_path: Path, config: Config, caller: str, scenario: Scenario
) -> None:
    layers, sequence = scenario
    creds = CALLERS[caller]
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        kernel = kernel_run(overlay, base, scenario, config, creds)
        outcomes, merged, upper, lowers, upper_dir = _fuse_run(base, scenario, config, creds)
        note(describe(sequence, kernel.outcomes, outcomes))
        assert outcome_differences(sequence, kernel.outcomes, outcomes) == []
        compare_runs(config, layers, kernel, merged, upper)
        readback = read_back(overlay, base, config, lowers, upper_dir)
        assert readback.differences(T.without_root(merged)) == []
    finally:
        shutil.rmtree(base)


def _case(config_name: str, caller: str, ci: int):  # type: ignore[no-untyped-def]
    config = CONFIGS[config_name]

    @pytest.mark.timeout(900)
    @oracle_settings(default=8, ci=ci, deep=1000)
    @given(scenario=O.scenarios(hard_links=config.hard_links))
    def test(kernel_overlay: KernelOverlay, tmp_path: Path, scenario: Scenario) -> None:
        _check_fuse(kernel_overlay, tmp_path, config, caller, scenario)

    test.__doc__ = f"The FUSE mount as {caller}, kernel with the {config_name} options."
    return test


if forms.ROOTLESS:  # one configuration, and this process as the one caller (tests.forms)
    test_fuse_matches_kernel_rootless = _case("rootless", "root", ci=60)
else:
    test_fuse_matches_kernel_defaults_root = _case("defaults", "root", ci=60)
    test_fuse_matches_kernel_defaults_user = _case("defaults", "user", ci=60)
    test_fuse_matches_kernel_features_root = _case("features", "root", ci=30)
    test_fuse_matches_kernel_features_user = _case("features", "user", ci=30)
