"""Kernel overlayfs mounts for the differential tests, and the allowlist in the report.

:class:`KernelOverlay` mounts ``mount -t overlay`` with options probed once per session
(the running kernel must accept ``index=on`` with ``redirect_dir=off`` and ``metacopy=off``,
and ``metacopy=on`` for the read-back check). Every mount is undone in a ``finally``: plain
``umount`` first, ``umount -l`` as the last resort, and a session finaliser sweeps anything
still mounted, so no test leaves a mount behind even when it fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Options for the comparison mount: layerfs renames merged directories by copying them up, the
# kernel with redirect_dir=off returns EXDEV (the runner then copies like mv), and hard links
# stay linked after copy-up in both (index=on).
COMPARE_OPTIONS = ("index=on", "redirect_dir=off", "metacopy=off")
# Options to read layerfs's upper back: it may contain metacopy files (layerfs writes them).
READBACK_OPTIONS = ("index=on", "metacopy=on")
READBACK_FALLBACK = ("index=on", "metacopy=on", "redirect_dir=on")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@dataclass
class KernelOverlay:
    """Mounts kernel overlayfs and guarantees the unmount."""

    compare_options: tuple[str, ...] = COMPARE_OPTIONS
    readback_options: tuple[str, ...] = READBACK_OPTIONS
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
    """A :class:`KernelOverlay` with options the running kernel accepts (probed once)."""
    base = tmp_path_factory.mktemp("overlay-probe")
    if not _accepts(base / "compare", COMPARE_OPTIONS):
        pytest.fail(f"kernel overlayfs refuses {','.join(COMPARE_OPTIONS)}")
    readback: tuple[str, ...] = READBACK_OPTIONS
    if not _accepts(base / "readback", readback):
        readback = READBACK_FALLBACK
        if not _accepts(base / "readback2", readback):
            pytest.fail("kernel overlayfs refuses metacopy=on")
    overlay = KernelOverlay(COMPARE_OPTIONS, readback)
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
