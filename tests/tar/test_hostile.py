"""Hostile layers: each is refused with an error naming the entry, and nothing leaks.

Every case runs in both modes. LAYER mode must leave no directory behind; ROOTFS mode must
leave the tree as it was whenever the pre-pass can see the problem; in all cases a sentinel
file outside the destination stays byte-identical.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from layerfs.errors import LayerFormatError, UnsafeLayerError
from layerfs.tar import ApplyMode, ApplyOptions, _extract, apply_layer
from tests.tar.tarbuild import M, d, f, hard, snapshot, sym
from tests.tar.tarbuild import blob as make_blob

SENTINEL = b"do not touch\n"

# Each case: (id, members built from the outside directory's absolute path, entry named)
Case = tuple[str, Callable[[str], list[M]], str]

CASES: list[Case] = [
    ("dotdot", lambda out: [f("../sentinel", b"x")], "../sentinel"),
    ("dotdot-deep", lambda out: [d("a"), f("a/../../sentinel", b"x")], "a/../../sentinel"),
    ("absolute", lambda out: [f(f"{out}/sentinel", b"x")], "/sentinel"),
    (
        "symlink-parent",
        lambda out: [sym("a", out), f("a/sentinel", b"x")],
        "a/sentinel",
    ),
    (
        "symlink-parent-dir",
        lambda out: [sym("a", out), d("a/newdir")],
        "a/newdir",
    ),
    (
        "symlink-parent-nested",
        lambda out: [d("x"), sym("x/a", out), f("x/a/sentinel", b"x")],
        "x/a/sentinel",
    ),
    (
        "symlink-relative-escape",
        lambda out: [sym("a", "../../outside"), f("a/sentinel", b"x")],
        "a/sentinel",
    ),
    ("hardlink-outside", lambda out: [hard("h", "../outside/sentinel")], "h"),
    ("hardlink-absolute", lambda out: [hard("h", f"{out}/sentinel")], "h"),
    (
        "hardlink-through-symlink",
        lambda out: [sym("a", out), hard("h", "a/sentinel")],
        "h",
    ),
    ("whiteout-dotdot", lambda out: [f(".wh..."), f("x")], ".wh..."),
    ("whiteout-dot", lambda out: [d("a"), f("a/.wh..")], "a/.wh.."),
    ("whiteout-root", lambda out: [f(".wh.")], ".wh."),
    (
        "whiteout-through-symlink",
        lambda out: [sym("a", out), f("a/.wh.sentinel")],
        "a/.wh.sentinel",
    ),
    (
        "opaque-through-symlink",
        lambda out: [sym("a", out), f("a/.wh..wh..opq")],
        "a/.wh..wh..opq",
    ),
    (
        "pax-path-override",
        lambda out: [M("innocent", pax={"path": "../outside/sentinel"}, data=b"x")],
        "../outside/sentinel",
    ),
    (
        "pax-linkpath-override",
        lambda out: [M("h", tarfile.LNKTYPE, linkname="ok", pax={"linkpath": "../x"})],
        "h",
    ),
    ("root-replaced-by-file", lambda out: [f("./", b"x")], "./"),
    ("root-replaced-by-symlink", lambda out: [sym(".", out)], "."),
]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "sentinel").write_bytes(SENTINEL)
    return out


def _check_outside(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["sentinel"]
    assert (outside / "sentinel").read_bytes() == SENTINEL


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("members", "entry"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layer_mode_refuses(
    tmp_path: Path, outside: Path, members: Callable[[str], list[M]], entry: str
) -> None:
    layers = tmp_path / "layers"
    layers.mkdir()
    src = make_blob(tmp_path, members(str(outside)))
    with pytest.raises(UnsafeLayerError) as info:
        apply_layer(src, layers / "new", options=ApplyOptions(mode=ApplyMode.LAYER))
    assert entry in str(info.value)
    assert "\n" not in str(info.value)
    assert os.listdir(layers) == []
    _check_outside(outside)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("members", "entry"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rootfs_mode_refuses_before_writing(
    tmp_path: Path, outside: Path, members: Callable[[str], list[M]], entry: str
) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "keep").write_bytes(b"keep")
    (rootfs / "x").write_bytes(b"x")
    before = snapshot(rootfs)
    src = make_blob(tmp_path, members(str(outside)))
    with pytest.raises(UnsafeLayerError) as info:
        apply_layer(src, rootfs, options=ApplyOptions(mode=ApplyMode.ROOTFS))
    assert entry in str(info.value)
    assert snapshot(rootfs) == before
    _check_outside(outside)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "members",
    [
        lambda: [f("a/passwd", b"x")],
        lambda: [d("a/sub")],
        lambda: [f("a/.wh.sentinel")],
        lambda: [f("a/.wh..wh..opq")],
        lambda: [hard("h", "a/sentinel")],
    ],
    ids=["file", "dir", "whiteout", "opaque", "hardlink"],
)
def test_rootfs_existing_symlink_is_never_followed(
    tmp_path: Path, outside: Path, members: Callable[[], list[M]]
) -> None:
    """A symlink already in the tree is found while writing; the write stops there."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "a").symlink_to(outside)
    with pytest.raises(UnsafeLayerError, match="'a' is a symlink"):
        apply_layer(
            make_blob(tmp_path, members()), rootfs, options=ApplyOptions(mode=ApplyMode.ROOTFS)
        )
    _check_outside(outside)
    assert (rootfs / "a").is_symlink()


@pytest.mark.timeout(30)
def test_rootfs_non_seekable_source_still_refuses(tmp_path: Path, outside: Path) -> None:
    """Without a pre-pass (a pipe), the entry is refused when reached; outside is intact."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    data = make_blob(tmp_path, [f("ok", b"1"), sym("a", str(outside)), f("a/sentinel")])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child writes the blob into the pipe
        os.close(r)
        with open(w, "wb") as pipe:
            pipe.write(data.read_bytes())
        os._exit(0)
    os.close(w)
    try:
        with open(r, "rb") as pipe, pytest.raises(UnsafeLayerError, match="a/sentinel"):
            apply_layer(pipe, rootfs, options=ApplyOptions(mode=ApplyMode.ROOTFS))
    finally:
        os.waitpid(pid, 0)
    _check_outside(outside)
    assert (rootfs / "ok").read_bytes() == b"1"  # documented: earlier entries stay


@pytest.mark.timeout(30)
def test_devices_need_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_extract, "may_create_devices", lambda: False)
    layers = tmp_path / "layers"
    layers.mkdir()
    dev = M("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    with pytest.raises(UnsafeLayerError, match="'dev/null'"):
        apply_layer(make_blob(tmp_path, [dev]), layers / "new")
    assert os.listdir(layers) == []


@pytest.mark.timeout(30)
def test_hardlink_to_outside_symlink_links_the_symlink_itself(
    tmp_path: Path, outside: Path
) -> None:
    """Linking never follows: the new name is the symlink, and writing it replaces it."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    members = [sym("s", f"{outside}/sentinel"), hard("h", "s"), f("h", b"replaced")]
    apply_layer(make_blob(tmp_path, members), rootfs, options=ApplyOptions(mode=ApplyMode.ROOTFS))
    assert (rootfs / "s").is_symlink()
    assert (rootfs / "h").read_bytes() == b"replaced"
    assert not (rootfs / "h").is_symlink()
    _check_outside(outside)


@pytest.mark.timeout(30)
def test_duplicate_symlink_then_file_replaces_the_symlink(tmp_path: Path, outside: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    members = [sym("a", f"{outside}/sentinel"), f("a", b"mine")]
    apply_layer(make_blob(tmp_path, members), rootfs, options=ApplyOptions(mode=ApplyMode.ROOTFS))
    assert (rootfs / "a").read_bytes() == b"mine"
    _check_outside(outside)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "members",
    [
        [hard("h", "missing")],
        [d("dir"), hard("h", "dir")],
        [f("self", b""), hard("self", "self")],
        [M("weird", b"V")],
        [f("x"), f("x/y")],
        [f(".wh.a/b")],
    ],
    ids=["link-missing", "link-dir", "link-self", "volume-header", "file-parent", "wh-parent"],
)
def test_malformed_entries_are_format_errors(tmp_path: Path, members: list[M]) -> None:
    layers = tmp_path / "layers"
    layers.mkdir()
    with pytest.raises(LayerFormatError):
        apply_layer(make_blob(tmp_path, members), layers / "new")
    assert os.listdir(layers) == []
