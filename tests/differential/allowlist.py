"""Intended differences between layerfs and kernel overlayfs, each with its reason.

Some are absorbed by how the comparison is made (the normaliser of upper directories, the
``mv``-like fallback of the os runner); the rest are per-operation outcome differences that the
differential test accepts when :attr:`Deviation.accepts` says so. The list is printed with the
test results so it stays visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.differential.ops import Op, Outcome


def _never(op: Op, kernel: Outcome, layerfs: Outcome) -> bool:
    return False


@dataclass(frozen=True)
class Deviation:
    name: str
    reason: str
    # whether an operation whose outcome differs (kernel vs layerfs) is this deviation
    accepts: Callable[[Op, Outcome, Outcome], bool] = _never


ALLOWLIST: tuple[Deviation, ...] = (
    Deviation(
        "kernel lists lower-only whiteouts",
        "a directory present in one lower only is listed by the kernel from the real directory, "
        "so a whiteout in it shows in readdir although lookup finds nothing; layerfs never "
        "lists whiteouts. Snapshots skip names that readdir lists and lstat cannot find.",
    ),
    Deviation(
        "directory rename is a copy-up, not EXDEV",
        "layerfs copies a directory with lower content up under the new name (no redirect "
        "xattrs); the kernel with redirect_dir=off returns EXDEV and the os runner falls back "
        "to copy + delete as mv does, so both record success and end with the same tree.",
    ),
    Deviation(
        "opaque on directories created in a merged parent",
        "the kernel (index=on) marks every new directory in a merged parent opaque as an "
        "optimisation; layerfs marks only directories created over a whiteout. The upper "
        "normaliser keeps opaque only where a lower directory is hidden by it.",
    ),
    Deviation(
        "metacopy upper files",
        "layerfs copies up only metadata on chmod/chown/utimes/setxattr of a lower regular "
        "file (sparse file + metacopy xattr); the comparison mount has metacopy=off and "
        "copies the data. A metacopy file compares equal to a full copy of the lower's data.",
    ),
    Deviation(
        "kernel bookkeeping xattrs",
        "trusted.overlay.origin/impure/nlink/uuid are the kernel's inode bookkeeping "
        "(index=on); layerfs does not write them. Dropped from upper snapshots.",
    ),
    Deviation(
        "shared whiteout inodes",
        "the kernel hard-links whiteouts to one shared inode; whiteouts compare as whiteouts "
        "regardless of mode, owner or link count.",
    ),
)


def accepted(op: Op, kernel: Outcome, layerfs: Outcome) -> Deviation | None:
    """The deviation that explains a differing outcome, or None."""
    return next((d for d in ALLOWLIST if d.accepts(op, kernel, layerfs)), None)
