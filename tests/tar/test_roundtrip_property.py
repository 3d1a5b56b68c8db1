"""Property: an upper written as a layer and applied onto its base gives the expected tree.

A random base tree and a random expected tree are drawn over a small name space; the upper
that turns one into the other is built the way overlayfs stores it (changed objects, whiteouts
in either encoding, opaque directories in either encoding). Then create_layer(upper) applied
in ROOTFS mode onto a copy of the base must give exactly the expected tree, creating twice must
give the same bytes, and LAYER mode followed by create_layer must reproduce the same blob.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerfs.tar import (
    ApplyMode,
    ApplyOptions,
    Compression,
    CreateOptions,
    apply_layer,
    create_layer,
)
from tests.tar.tarbuild import snapshot

Node = tuple[Any, ...]  # ("file", data, mode, mtime) | ("link", target) | ("dir", mode, kids)

NAMES = st.sampled_from(["a", "b", "c", "ü"])
LEAF = st.one_of(
    st.builds(
        lambda data, mode, mtime: ("file", data, mode, mtime),
        st.binary(max_size=64),
        st.sampled_from([0o644, 0o600, 0o755]),
        st.integers(1_000_000_000, 1_700_000_000),
    ),
    st.builds(lambda target: ("link", target), st.sampled_from(["a", "../b", "/abs/x"])),
)
TREE = st.dictionaries(
    NAMES,
    st.recursive(
        LEAF,
        lambda kids: st.builds(
            lambda children, mode: ("dir", mode, children),
            st.dictionaries(NAMES, kids, max_size=3),
            st.sampled_from([0o755, 0o700]),
        ),
        max_leaves=8,
    ),
    max_size=4,
)


def materialise(path: Path, node: Node) -> None:
    if node[0] == "file":
        path.write_bytes(node[1])
        os.chmod(path, node[2])
        os.utime(path, (node[3], node[3]))
    elif node[0] == "link":
        os.symlink(node[1], path)
    else:
        path.mkdir()
        os.chmod(path, node[1])
        for name, kid in node[2].items():
            materialise(path / name, kid)


def build_upper(
    updir: Path, base: dict[str, Node] | None, exp: dict[str, Node], data: st.DataObject
) -> None:
    """Write into *updir* what overlayfs would hold to turn *base* into *exp*."""
    chardev = data.draw(st.booleans(), label="chardev whiteouts")
    for name, node in exp.items():
        old = base.get(name) if base is not None else None
        if node == old:
            continue
        if node[0] == "dir" and old is not None and old[0] == "dir":
            (updir / name).mkdir()
            os.chmod(updir / name, node[1])
            if data.draw(st.booleans(), label=f"opaque {name}"):
                if chardev:
                    os.setxattr(updir / name, "trusted.overlay.opaque", b"y")
                else:
                    (updir / name / ".wh..wh..opq").write_bytes(b"")
                for kid_name, kid in node[2].items():
                    materialise(updir / name / kid_name, kid)
            else:
                build_upper(updir / name, old[2], node[2], data)
        else:
            materialise(updir / name, node)
    for name in (base or {}).keys() - exp.keys():
        if chardev:
            os.mknod(updir / name, stat.S_IFCHR, 0)
        else:
            (updir / f".wh.{name}").write_bytes(b"")


def _create(upper: Path, kind: Compression) -> bytes:
    out = io.BytesIO()
    create_layer(upper, out, options=CreateOptions(compression=kind, threads=1))
    return out.getvalue()


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=TREE, exp=TREE, kind=st.sampled_from(list(Compression)), data=st.data())
def test_create_then_apply_gives_the_expected_tree(
    base: dict[str, Node], exp: dict[str, Node], kind: Compression, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rootfs, expected, upper = tmp / "rootfs", tmp / "expected", tmp / "upper"
        materialise(rootfs, ("dir", 0o755, base))
        materialise(expected, ("dir", 0o755, exp))
        upper.mkdir()
        build_upper(upper, base, exp, data)

        blob = _create(upper, kind)
        assert _create(upper, kind) == blob
        apply_layer(io.BytesIO(blob), rootfs, options=ApplyOptions(mode=ApplyMode.ROOTFS))
        assert snapshot(rootfs, dir_mtimes=False) == snapshot(expected, dir_mtimes=False)

        apply_layer(io.BytesIO(blob), tmp / "layer", options=ApplyOptions(mode=ApplyMode.LAYER))
        assert _create(tmp / "layer", kind) == blob
