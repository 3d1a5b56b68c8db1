"""Awkward but valid layers: odd names, long names, empty files, links, sparse files, xattrs,
and the shapes real builders write (no root entry, same-layer whiteouts, absolute hard links)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from layerfs import Stack
from layerfs.errors import LayerFormatError
from layerfs.tar import ApplyMode, ApplyOptions, apply_layer
from layerfs.whiteout import UpperFormat, WhiteoutStyle, XattrNamespace
from tests.tar.tarbuild import M, build_tar, d, f, hard, sym
from tests.treedesc import Tree, host_tree, stack_tree

pytestmark = pytest.mark.timeout(60)

ROOTFS = ApplyOptions(mode=ApplyMode.ROOTFS)
WH_FILES = ApplyOptions(upper_format=UpperFormat(XattrNamespace.USER, WhiteoutStyle.WH_FILE))
LONG_COMPONENT = "n" * 255
DEEP = "/".join(["deep"] * 40)  # 199 characters: needs a long-name record


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_names(tmp_path: Path, fmt: int) -> None:
    members = [
        f("ünïcødé-名前.txt", b"u"),
        f(LONG_COMPONENT, b"long"),
        f(DEEP + "/leaf", b"deep"),
        sym("longlink", "t" * 300),
        f("empty"),
        f("spaces and\ttabs", b"s"),
        hard("hard-to-deep", DEEP + "/leaf"),
    ]
    src = tmp_path / "blob"
    src.write_bytes(build_tar(members, fmt))
    out = tmp_path / "out"
    apply_layer(src, out)
    assert (out / "ünïcødé-名前.txt").read_bytes() == b"u"
    assert (out / LONG_COMPONENT).read_bytes() == b"long"
    assert (out / DEEP / "leaf").read_bytes() == b"deep"
    assert os.readlink(out / "longlink") == "t" * 300
    assert (out / "empty").read_bytes() == b""
    assert (out / "spaces and\ttabs").exists()
    assert (out / "hard-to-deep").stat().st_ino == (out / DEEP / "leaf").stat().st_ino


def test_non_utf8_names_round_trip_as_bytes(tmp_path: Path) -> None:
    raw = b"latin1-\xe9t\xe9"
    name = os.fsdecode(raw)
    src = tmp_path / "blob"
    src.write_bytes(build_tar([f(name, b"x")], tarfile.GNU_FORMAT))
    apply_layer(src, tmp_path / "out")
    assert os.listdir(os.fsencode(tmp_path / "out")) == [raw]


def test_hard_links_to_earlier_entries_in_other_dirs(tmp_path: Path) -> None:
    members = [d("a"), f("a/one", b"1"), d("b"), hard("b/two", "a/one"), hard("b/three", "./a/one")]
    apply_layer(build_blob(tmp_path, members), tmp_path / "out")
    ino = (tmp_path / "out" / "a" / "one").stat().st_ino
    assert (tmp_path / "out" / "b" / "two").stat().st_ino == ino
    assert (tmp_path / "out" / "a" / "one").stat().st_nlink == 3


def test_binary_xattr_values(tmp_path: Path) -> None:
    value = bytes(range(256))
    member = f("cap", b"", pax={"SCHILY.xattr.user.bin": value.decode("utf-8", "surrogateescape")})
    apply_layer(build_blob(tmp_path, [member]), tmp_path / "out")
    assert os.getxattr(tmp_path / "out" / "cap", "user.bin") == value


def test_explicit_root_entry_sets_root_metadata(tmp_path: Path) -> None:
    apply_layer(build_blob(tmp_path, [d("./", mode=0o711), f("x")]), tmp_path / "out")
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o711


def test_old_v7_directory_and_contiguous_file(tmp_path: Path) -> None:
    members = [M("olddir/", tarfile.AREGTYPE), M("olddir/c", tarfile.CONTTYPE, data=b"c")]
    apply_layer(build_blob(tmp_path, members), tmp_path / "out")
    assert (tmp_path / "out" / "olddir").is_dir()
    assert (tmp_path / "out" / "olddir" / "c").read_bytes() == b"c"


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
@pytest.mark.parametrize("mode", list(ApplyMode))
def test_sparse_files_keep_their_holes(tmp_path: Path, fmt: str, mode: ApplyMode) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(1 << 20)
        fh.write(b"middle")
        fh.seek((64 << 20) - 4)
        fh.write(b"tail")
    blob = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "-C", str(src), "-cf", str(blob), "."], check=True
    )
    out = tmp_path / "out"
    if mode is ApplyMode.ROOTFS:
        out.mkdir()
    apply_layer(blob, out, options=ApplyOptions(mode=mode))
    assert (out / "sparse").read_bytes() == sparse.read_bytes()
    assert (out / "sparse").stat().st_blocks * 512 < 1 << 20  # holes, not 64 MiB of zeros


def build_blob(tmp_path: Path, members: list[M]) -> Path:
    path = tmp_path / f"blob-{len(list(tmp_path.glob('blob-*')))}"
    path.write_bytes(build_tar(members))
    return path


# -- layers as real builders write them ----------------------------------------------------------
# Each case is checked both ways: applied in ROOTFS mode onto the tree of the layers below (what
# `umoci unpack` does), and unpacked in LAYER mode and stacked over those layers with a Stack.
# The two must show the same tree, root directory included.

LOWER = [d("./"), d("doc"), d("doc/pkg"), f("doc/pkg/copyright", b"c"), f("doc/pkg/README", b"r")]
LOWER += [d("etc"), f("etc/motd", b"lower"), d("opt"), d("opt/old"), f("opt/old/x", b"x")]


def both_ways(tmp_path: Path, lower: list[M], layer: list[M]) -> Tree:
    """The tree *layer* over *lower* shows; asserts that both modes agree on it."""
    flat = tmp_path / "flat"
    flat.mkdir()
    os.chmod(flat, 0o700)  # anything but 0755: a layer without a root entry must keep it
    for members in (lower, layer):
        apply_layer(build_blob(tmp_path, members), flat, options=ROOTFS)
    apply_layer(build_blob(tmp_path, lower), tmp_path / "l0")
    apply_layer(build_blob(tmp_path, layer), tmp_path / "l1")
    with Stack([tmp_path / "l1", tmp_path / "l0"]) as stack:
        assert stack_tree(stack) == host_tree(flat)
        return stack_tree(stack)


def test_layer_without_root_entry_leaves_the_root_alone(tmp_path: Path) -> None:
    """buildah and docker write no `./` entry: the layer's root is 0755, as a fresh root is."""
    old = os.umask(0o077)
    try:
        apply_layer(build_blob(tmp_path, [f("a/b/c", b"1")]), tmp_path / "out")
    finally:
        os.umask(old)
    for path in ("out", "out/a", "out/a/b"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o755, path
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(mode=0o711)
    apply_layer(build_blob(tmp_path, [f("x")]), rootfs, options=ROOTFS)
    assert stat.S_IMODE(rootfs.stat().st_mode) == 0o711
    tree = both_ways(tmp_path, [d("./", mode=0o755), f("x")], [f("y")])
    assert tree["/"][1] == 0o755


@pytest.mark.parametrize("replacement", ["file", "symlink"])
def test_whiteouts_below_a_directory_the_layer_replaced(tmp_path: Path, replacement: str) -> None:
    """`umoci repack` of a non-empty directory that became a file: nothing to hide below it."""
    new = f("doc/pkg", b"now a file") if replacement == "file" else sym("doc/pkg", "/etc")
    layer = [d("doc"), new, f("doc/pkg/.wh.README"), f("doc/pkg/.wh.copyright")]
    layer += [f("doc/pkg/.wh..wh..opq")]
    tree = both_ways(tmp_path, LOWER, layer)
    assert stat.S_IFMT(tree["/doc/pkg"][0]) != stat.S_IFDIR
    assert os.listdir(tmp_path / "l1" / "doc") == ["pkg"]
    assert "/etc/motd" in tree  # a symlink this layer made is never followed


@pytest.mark.parametrize("whiteout_first", [True, False], ids=["whiteout-first", "whiteout-last"])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_whiteout_hides_lower_layers_only(tmp_path: Path, kind: str, whiteout_first: bool) -> None:
    """OCI layer.md: a whiteout never hides what the same layer adds, in either order."""
    added = [f("etc/motd", b"mine")] if kind == "file" else [d("opt/old"), f("opt/old/new", b"n")]
    whiteout = f("etc/.wh.motd") if kind == "file" else f("opt/.wh.old")
    layer = [whiteout, *added] if whiteout_first else [*added, whiteout]
    tree = both_ways(tmp_path, LOWER, layer)
    if kind == "file":
        assert tree["/etc/motd"][-1] == hashlib.sha256(b"mine").hexdigest()
    else:
        assert "/opt/old/new" in tree and "/opt/old/x" not in tree


@pytest.mark.parametrize(
    ("below", "left"),
    [
        ("opt/old/.wh.x", []),
        ("opt/old/y/.wh.z", []),
        ("opt/old/.wh..wh..opq", ["/opt/old"]),
        ("opt/old/y/.wh..wh..opq", ["/opt/old", "/opt/old/y"]),
    ],
)
def test_whiteout_of_a_directory_with_markers_below_it(
    tmp_path: Path, below: str, left: list[str]
) -> None:
    """A whiteout marker never makes its directory part of the layer, an opaque one does:
    whiteouts below a name the layer whites out leave nothing, opaque directories stay."""
    for order, layer in enumerate(([f(below), f("opt/.wh.old")], [f("opt/.wh.old"), f(below)])):
        (tmp_path / str(order)).mkdir()
        tree = both_ways(tmp_path / str(order), LOWER, layer)
        assert [path for path in tree if path.startswith("/opt/old")] == left


def test_same_layer_whiteout_as_files_in_an_unprivileged_layer(tmp_path: Path) -> None:
    """With `.wh.` files for whiteouts, a kept directory is opaque and carries no whiteout."""
    layer = [d("opt"), d("opt/old"), f("opt/old/new"), f("opt/.wh.old"), f("etc/.wh.motd")]
    apply_layer(build_blob(tmp_path, layer), tmp_path / "out", options=WH_FILES)
    assert sorted(os.listdir(tmp_path / "out" / "opt")) == ["old"]
    assert os.getxattr(tmp_path / "out" / "opt" / "old", "user.overlay.opaque") == b"y"
    assert os.listdir(tmp_path / "out" / "etc") == [".wh.motd"]


def test_absolute_hard_link_targets_mean_the_root(tmp_path: Path) -> None:
    """kaniko writes hard links as `/usr/bin/a`: the path from the layer's root."""
    layer = [d("bin"), f("bin/a", b"same"), hard("bin/b", "/bin/a"), hard("c", "//bin/./a")]
    both_ways(tmp_path, LOWER, layer)
    ino = (tmp_path / "l1" / "bin" / "a").stat().st_ino
    assert (tmp_path / "l1" / "bin" / "b").stat().st_ino == ino
    assert (tmp_path / "l1" / "c").stat().st_ino == ino


@pytest.mark.parametrize("mode", list(ApplyMode))
def test_tar_that_ends_after_its_last_data(tmp_path: Path, mode: ApplyMode) -> None:
    """umoci 0.4.7 `insert` ends a layer right after the data: no padding, no zero blocks."""
    whole = build_tar([d("etc"), f("etc/extra", b"f\n")])
    cut = whole[: 2 * 512 + 2]  # header, header, 2 bytes of data
    src = tmp_path / "blob"
    src.write_bytes(cut)
    out = tmp_path / "out"
    if mode is ApplyMode.ROOTFS:
        out.mkdir()
    result = apply_layer(src, out, options=ApplyOptions(mode=mode))
    assert (out / "etc" / "extra").read_bytes() == b"f\n"
    assert result.diff_id == "sha256:" + hashlib.sha256(cut).hexdigest()
    src.write_bytes(cut[:-1])  # data itself cut short: still an error
    with pytest.raises(LayerFormatError):
        apply_layer(src, tmp_path / "again", options=ApplyOptions(mode=ApplyMode.LAYER))


def test_pax_mtimes_are_exact_to_the_nanosecond(tmp_path: Path) -> None:
    """A PAX ``mtime`` record is decimal: read as a float it is off by up to a microsecond, and
    past 2^33 s by a second. GNU tar, umoci and Go's archive/tar read the digits."""

    stamps = {"frac": "1700000000.123456789", "future": "8589934597", "old": "-31536000.5"}
    blob = tmp_path / "layer.tar"
    with tarfile.open(blob, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, stamp in stamps.items():
            info = tarfile.TarInfo(name)
            info.size = 1
            info.pax_headers = {"mtime": stamp}
            tf.addfile(info, io.BytesIO(b"x"))
    layer = tmp_path / "layer"
    apply_layer(blob, layer)
    seen = {name: (layer / name).lstat().st_mtime_ns for name in stamps}
    assert seen == {
        "frac": 1700000000123456789,
        "future": 8589934597 * 10**9,
        "old": -31536000500000000,
    }
