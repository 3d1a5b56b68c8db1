"""Kernel overlayfs mounts for the differential tests, and the allowlist in the report.

:class:`KernelOverlay` mounts ``mount -t overlay`` with the option sets of
:mod:`tests.differential.configs`, each probed once per session (the running kernel must
accept all of them). Every mount is undone in a ``finally``: plain ``umount`` first,
``umount -l`` as the last resort, and a session finaliser sweeps anything still mounted, so
no test leaves a mount behind even when it fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.differential.configs import CONFIGS


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@dataclass
class KernelOverlay:
    """Mounts kernel overlayfs and guarantees the unmount."""

    active: set[Path] = field(default_factory=set)

    @contextmanager
    def mounted(
        self,
        lowers: Sequence[Path],
        upper: Path,
        work: Path,
        target: Path,
        options: Sequence[str],
    ) -> Iterator[Path]:
        """Mount at *target* for the duration of the block (lowers top-most first)."""
        for d in (upper, work, target):
            d.mkdir(parents=True, exist_ok=True)
        opts = ",".join(
            [
                "lowerdir=" + ":".join(str(p) for p in lowers),
                f"upperdir={upper}",
                f"workdir={work}",
                *options,
            ]
        )
        done = _run("mount", "-t", "overlay", "overlay", "-o", opts, str(target))
        if done.returncode != 0:
            raise RuntimeError(f"mount -t overlay -o {opts} failed: {done.stderr.strip()}")
        self.active.add(target)
        try:
            yield target
        finally:
            self.unmount(target)

    def unmount(self, target: Path) -> None:
        if _run("umount", str(target)).returncode != 0:
            done = _run("umount", "-l", str(target))
            if done.returncode != 0:
                raise RuntimeError(f"umount -l {target} failed: {done.stderr.strip()}")
        self.active.discard(target)


def _accepts(base: Path, options: Sequence[str]) -> bool:
    lower, upper, work, target = (base / n for n in ("lower", "upper", "work", "mnt"))
    lower.mkdir(parents=True, exist_ok=True)
    probe = KernelOverlay()
    try:
        with probe.mounted([lower], upper, work, target, options):
            return True
    except RuntimeError:
        return False


@pytest.fixture(scope="session")
def kernel_overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelOverlay]:
    """A :class:`KernelOverlay`, once the running kernel accepted every option set used."""
    base = tmp_path_factory.mktemp("overlay-probe")
    wanted = {c.kernel for c in CONFIGS.values()} | {c.readback for c in CONFIGS.values()}
    for i, options in enumerate(sorted(wanted)):
        if not _accepts(base / str(i), options):
            pytest.fail(f"kernel overlayfs refuses {','.join(options) or 'its defaults'}")
    overlay = KernelOverlay()
    try:
        yield overlay
    finally:
        for target in sorted(overlay.active):
            overlay.unmount(target)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the intended differences between layerfs and kernel overlayfs with the results."""
    if not any(
        "differential" in str(getattr(r, "nodeid", ""))
        for reports in terminalreporter.stats.values()
        for r in reports
    ):
        return
    from tests.differential.allowlist import ALLOWLIST

    terminalreporter.section("layerfs vs kernel overlayfs: intended differences")
    for entry in ALLOWLIST:
        terminalreporter.write_line(f"- {entry.name}: {entry.reason}")
