"""Hostile layers: each is refused with an error naming the entry, and nothing leaks.

Every case runs in both modes. LAYER mode must leave no directory behind; ROOTFS mode must
leave the tree as it was whenever the pre-pass can see the problem; in all cases a sentinel
file outside the destination stays byte-identical.
"""

from __future__ import annotations

import os
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from layerfs.errors import LayerFormatError, UnsafeLayerError
from layerfs.tar import MAX_EXTENDED_HEADER, ApplyMode, ApplyOptions, _extract, apply_layer
from tests.tar.tarbuild import M, build_tar, d, f, hard, snapshot, sym
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
    (
        "hardlink-through-symlink",
        lambda out: [sym("a", out), hard("h", "a/sentinel")],
        "h",
    ),
    ("whiteout-dotdot", lambda out: [f(".wh..."), f("x")], ".wh..."),
    ("whiteout-dot", lambda out: [d("a"), f("a/.wh..")], "a/.wh.."),
    ("whiteout-root", lambda out: [f(".wh.")], ".wh."),
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
def test_devices_are_left_out_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only root of the host makes device nodes; for anyone else they are left out with a
    warning (docker and containers/storage do the same in a user namespace), the rest of the
    layer is applied."""
    monkeypatch.setattr(_extract, "may_create_devices", lambda: False)
    layers = tmp_path / "layers"
    layers.mkdir()
    dev = M("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    apply_layer(make_blob(tmp_path, [d("dev"), dev, f("dev/readme", b"r")]), layers / "new")
    assert sorted(os.listdir(layers / "new" / "dev")) == ["readme"]
    assert "left out 1 device node(s) (dev/null)" in caplog.text


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


# -- headers that announce absurd sizes or hold what no file system can -------------------------


def _extended_header(kind: bytes, size: int) -> bytes:
    """A lone GNU long-name/long-link or PAX header announcing *size* bytes, then a little."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT) + b"x" * 4096 + b"\0" * 1024


def _apply_both_modes(tmp_path: Path, data: bytes, error: type[Exception]) -> list[str]:
    """Apply *data* in both modes: each fails with *error* and leaves nothing behind."""
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "blob"
    src.write_bytes(data)
    messages = []
    for mode in ApplyMode:
        dest = work / mode.value
        if mode is ApplyMode.ROOTFS:
            dest.mkdir()
        with pytest.raises(error) as info:
            apply_layer(src, dest, options=ApplyOptions(mode=mode))
        assert "\n" not in str(info.value)
        assert os.listdir(work) == ([dest.name] if dest.exists() else [])
        if dest.exists():
            assert os.listdir(dest) == []
            dest.rmdir()
        messages.append(str(info.value))
    return messages


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "kind",
    [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE],
    ids=["gnu-longname", "gnu-longlink", "pax", "pax-global"],
)
@pytest.mark.parametrize("size", [MAX_EXTENDED_HEADER + 1, 8 << 30, 1 << 50], ids=str)
def test_absurd_extended_header_is_refused_before_reading(
    tmp_path: Path, kind: bytes, size: int
) -> None:
    """One line naming the header, and no allocation of the announced size."""
    tracemalloc.start()
    try:
        messages = _apply_both_modes(tmp_path, _extended_header(kind, size), LayerFormatError)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20
    assert all(f"extended header of {size} bytes" in m for m in messages)


def test_long_names_up_to_the_limit_are_fine(tmp_path: Path) -> None:
    target = "/".join(["t" * 200] * 20)  # 4 KiB: a GNU long link and a PAX record
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        out = tmp_path / f"out{fmt}"
        src = tmp_path / f"blob{fmt}"
        src.write_bytes(build_tar([sym("s", target)], fmt))
        apply_layer(src, out)
        assert os.readlink(out / "s") == target


def _sparse_1_0(data: bytes) -> M:
    pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s"}
    return M("GNUSparseFile.0/s", data=data, pax={**pax, "GNU.sparse.realsize": "10"})


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([M("a", pax={"path": "a\0b"})], "NUL"),
        ([M("s", tarfile.SYMTYPE, linkname="t", pax={"linkpath": "t\0u"})], "NUL"),
        ([sym("s", "t" * 4096)], "longer than"),
        ([f("a/" + "n" * 256)], "longer than"),
        ([M("f", pax={"uid": "-5"})], "uid -5"),
        ([M("f", pax={"gid": str(1 << 40)})], "gid"),
        ([M("f", pax={"mtime": "nan"})], "mtime"),
        ([M("f", pax={"mtime": "1e400"})], "mtime"),
        ([M("f", pax={"SCHILY.xattr.user.big": "v" * 70_000})], "larger than 65536"),
        ([M("f", pax={"SCHILY.xattr.user." + "n" * 300: "v"})], "longer than 255"),
        ([_sparse_1_0(b"99999999999\n")], "bad header"),
        ([_sparse_1_0(b"garbage\n")], "bad header"),
        ([f("ok"), M("f", pax={"GNU.sparse.map": "a,b", "GNU.sparse.size": "9"})], "bad header"),
    ],
    ids=[
        "nul-name",
        "nul-target",
        "long-target",
        "long-component",
        "uid",
        "gid",
        "mtime-nan",
        "mtime-inf",
        "xattr-value",
        "xattr-name",
        "sparse-1.0-count",
        "sparse-1.0-garbage",
        "sparse-0.1-map",
    ],
)
def test_header_fields_no_file_system_holds(tmp_path: Path, members: list[M], reason: str) -> None:
    src = make_blob(tmp_path, members)
    data = src.read_bytes()
    src.unlink()
    messages = _apply_both_modes(tmp_path, data, LayerFormatError)
    assert all(reason in m for m in messages), messages


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", list(ApplyMode))
@pytest.mark.parametrize(
    "marker", [".wh.sentinel", ".wh..wh..opq", "sub/.wh.x"], ids=["whiteout", "opaque", "deeper"]
)
def test_markers_below_a_symlink_of_the_layer_do_nothing(
    tmp_path: Path, outside: Path, mode: ApplyMode, marker: str
) -> None:
    """The layer's own symlink hides everything below its name: a marker there hides nothing."""
    dest = tmp_path / "dest"
    if mode is ApplyMode.ROOTFS:
        dest.mkdir()
    members = [sym("a", str(outside)), f(f"a/{marker}"), f("b", b"b")]
    apply_layer(make_blob(tmp_path, members), dest, options=ApplyOptions(mode=mode))
    assert sorted(os.listdir(dest)) == ["a", "b"]
    assert os.readlink(dest / "a") == str(outside)
    _check_outside(outside)


@pytest.mark.timeout(30)
def test_absolute_hard_link_stays_inside(tmp_path: Path, outside: Path) -> None:
    """An absolute hard-link target is read from the layer's root: the host path is missing."""
    members = [hard("h", f"{outside}/sentinel")]
    messages = _apply_both_modes(tmp_path, make_blob(tmp_path, members).read_bytes(), Exception)
    assert all("does not exist" in m for m in messages)
    _check_outside(outside)
