"""Intended differences between layerfs and kernel overlayfs, each with its reason.

Some are absorbed by how the comparison is made (the normaliser of upper directories, the
``mv``-like fallback of the os runner); the rest are per-operation outcome differences that the
differential test accepts when :attr:`Deviation.accepts` says so. The list is printed with the
test results so it stays visible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from tests.differential.ops import Op, Outcome
from tests.differential.trees import Snapshot
from tests.property.model import Inode


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
        "the kernel marks every new directory in a merged parent opaque, and so does layerfs; "
        "but a directory layerfs copies up whole on rename is opaque where the kernel's "
        "mv fallback makes a plain one. The upper normaliser keeps opaque only where a lower "
        "directory is hidden by it.",
    ),
    Deviation(
        "metacopy upper files",
        "with metacopy=on (the features configuration) the kernel and layerfs may leave "
        "different files metadata-only: layerfs completes the data of a file it links into a "
        "directory it copies whole, where the kernel records a redirect. A metacopy file "
        "compares equal to a full copy of the lower's data.",
    ),
    Deviation(
        "kernel bookkeeping xattrs",
        "trusted.overlay.origin/impure/nlink/uuid are the kernel's inode bookkeeping. layerfs "
        "writes origin and impure in the kernel's format, but not always on the same objects "
        "(a directory it copies whole on rename carries its objects' origins), and never "
        "nlink or uuid. Dropped from upper snapshots; the read-back mount checks that the "
        "kernel accepts layerfs's.",
    ),
    Deviation(
        "shared whiteout inodes",
        "the kernel hard-links whiteouts to one shared inode; whiteouts compare as whiteouts "
        "regardless of mode, owner or link count.",
    ),
    Deviation(
        "hard links without privilege",
        "kernel overlayfs in a user namespace has no index, so its copy-up breaks lower hard "
        "links and link() of a lower file leaves two inodes (a rename between them gives "
        "ESTALE); layerfs keeps them linked. Rootless runs (tests.forms) generate no lower "
        "hard links and no link(); privileged runs compare both.",
    ),
    Deviation(
        ".wh. whiteouts in an upper",
        "where a process cannot make 0/0 devices layerfs writes .wh.NAME files into the upper, "
        "which the kernel does not read; never compared with it (tests/dropin/test_rootless.py "
        "checks that layerfs reads them back).",
    ),
)


def accepted(op: Op, kernel: Outcome, layerfs: Outcome) -> Deviation | None:
    """The deviation that explains a differing outcome, or None."""
    return next((d for d in ALLOWLIST if d.accepts(op, kernel, layerfs)), None)


LINK_COPY_UP = Deviation(
    "hard link names copied up together",
    "when one name of a lower hard link is copied up, layerfs links every name of it that the "
    "stack has seen into the upper at once (and their parent directories); the kernel with "
    "index=on copies up only the name used and links the others through its index. The upper "
    "comparison drops such extra names (and directories made only to hold them) from "
    "layerfs's upper when they name a lower hard-linked file; the directories made only to "
    "hold them are merged directories (nlink 1) in layerfs and lower-only ones in the kernel.",
)
ALLOWLIST = (*ALLOWLIST, LINK_COPY_UP)


def reconcile_link_copy_up(
    kernel: Snapshot, layerfs: Snapshot, lower_view: Mapping[str, Inode]
) -> Snapshot:
    """*layerfs* without the names :data:`LINK_COPY_UP` explains (see its reason).

    Dropped: non-directories that the kernel's upper lacks and that name a lower hard-linked
    file (two names of one inode in *lower_view*), then directories of layerfs's upper that
    the kernel's upper lacks and that hold nothing else.
    """
    counts = Counter(id(node) for node in lower_view.values())
    linked = {p for p, node in lower_view.items() if node.kind == "file" and counts[id(node)] > 1}
    extra = {
        p
        for p, n in layerfs.nodes.items()
        if p in linked and p not in kernel.nodes and n.kind not in ("dir", "whiteout")
    }
    nodes = {p: n for p, n in layerfs.nodes.items() if p not in extra}
    for path in sorted(nodes, key=lambda p: -p.count("/")):
        if path in kernel.nodes or nodes[path].kind != "dir":
            continue
        if not any(p.startswith(path + "/") for p in nodes):
            del nodes[path]
    links = frozenset(g - extra for g in layerfs.links if len(g - extra) > 1)
    return Snapshot(nodes, links)


def mask_dir_nlink(layerfs: Snapshot, kernel: Snapshot, holders: set[str]) -> Snapshot:
    """*layerfs* with the kernel's nlink for the directories :data:`LINK_COPY_UP` made."""
    nodes = dict(layerfs.nodes)
    for path in holders:
        if path in nodes and path in kernel.nodes:
            nodes[path] = replace(nodes[path], nlink=kernel.nodes[path].nlink)
    return Snapshot(nodes, layerfs.links)
