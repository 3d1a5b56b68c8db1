"""Property: a layer means the same in both modes, whatever its entries and their order.

A random lower layer and a random upper layer are drawn over a small name space; the upper
mixes files, directories, symlinks, whiteouts and opaque markers in any order, also on the
same names and below one another (what real builders write: a name added and whited out in
one layer, whiteouts below a directory the layer replaced). Applied in ROOTFS mode onto the
lower's tree (as ``umoci unpack`` does) and unpacked in LAYER mode and stacked over the lower
(as the store and kernel overlayfs read it), both must show the same tree. Layers one of the
modes refuses (a file used as a directory, say) are not compared. Like the builders, the upper
lists the directories its entries are in (a directory a layer does not list is 0755 in LAYER
mode but keeps the lower's metadata in ROOTFS mode: see docs/layers.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerfs import Stack
from layerfs.errors import LayerFormatError
from layerfs.tar import ApplyMode, ApplyOptions, apply_layer
from tests.property.profiles import oracle_settings
from tests.tar.tarbuild import M, build_tar, d, f, sym
from tests.treedesc import host_tree, stack_tree

PATHS = ["a", "b", "a/x", "a/y", "a/x/z", "b/x"]
LOWER_ENTRY = st.one_of(
    st.builds(lambda p: d(p, mode=0o750), st.sampled_from(PATHS)),
    st.builds(lambda p, data: f(p, data), st.sampled_from(PATHS), st.sampled_from([b"1", b"2"])),
)
UPPER_ENTRY = st.one_of(
    LOWER_ENTRY,
    st.builds(lambda p: sym(p, "a/x"), st.sampled_from(PATHS)),
    st.builds(lambda p: _whiteout(p), st.sampled_from(PATHS)),
    st.builds(lambda p: f(f"{p}/.wh..wh..opq"), st.sampled_from(["a", "b", "a/x"])),
)


def _whiteout(path: str) -> M:
    parent, _, name = path.rpartition("/")
    return f(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def _with_parents(entries: list[M]) -> list[M]:
    """*entries*, one per name, after entries for the directories they are in (as builders
    write layers); markers are kept as they come. Two objects for one name in one layer are
    applied in tar order by ROOTFS mode, so markers between them could mean different things."""
    named: dict[str, M] = {}
    for entry in entries:
        named.setdefault(entry.name, entry)
    parents = {p for e in named.values() for p in _ancestors(e.name)} - set(named)
    return [d(p, mode=0o711) for p in sorted(parents)] + list(named.values())


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _apply(src: Path, dest: Path, mode: ApplyMode) -> bool:
    try:
        apply_layer(src, dest, options=ApplyOptions(mode=mode))
    except LayerFormatError:
        return False
    return True


@pytest.mark.root  # whiteouts as 0/0 devices and trusted.overlay xattrs, as the store writes
@pytest.mark.timeout(300)
@oracle_settings(default=60, ci=300, deep=3000)
@given(
    lower=st.lists(LOWER_ENTRY, max_size=5),
    upper=st.lists(UPPER_ENTRY, min_size=1, max_size=7),
)
def test_both_modes_show_the_same_tree(lower: list[M], upper: list[M]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "lower.tar").write_bytes(build_tar([d("./"), *_with_parents(lower)]))
        (base / "upper.tar").write_bytes(build_tar(_with_parents(upper)))
        flat = base / "flat"
        flat.mkdir()
        if not _apply(base / "lower.tar", flat, ApplyMode.ROOTFS):
            return  # a lower layer that is itself refused
        assert _apply(base / "lower.tar", base / "l0", ApplyMode.LAYER)
        in_rootfs = _apply(base / "upper.tar", flat, ApplyMode.ROOTFS)
        as_layer = _apply(base / "upper.tar", base / "l1", ApplyMode.LAYER)
        if not (in_rootfs and as_layer):
            return
        with Stack([base / "l1", base / "l0"]) as stack:
            assert stack_tree(stack) == host_tree(flat)
