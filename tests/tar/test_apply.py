"""apply_layer: both modes, whiteouts, opaque dirs, metadata, limits, digests, failures."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from layerfs.errors import LayerFormatError
from layerfs.progress import task
from layerfs.tar import ApplyMode, ApplyOptions, Compression, apply_layer
from layerfs.whiteout import UpperFormat, WhiteoutStyle, XattrNamespace
from tests.progress import RecordingProgress
from tests.tar.tarbuild import MTIME, M, build_tar, compress, d, f, hard, snapshot, sym
from tests.tar.tarbuild import blob as make_blob

ROOTFS = ApplyOptions(mode=ApplyMode.ROOTFS)
WH_FILES = ApplyOptions(
    mode=ApplyMode.LAYER, upper_format=UpperFormat(XattrNamespace.USER, WhiteoutStyle.WH_FILE)
)

pytestmark = pytest.mark.timeout(60)


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc" / "old").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"root")
    (root / "etc" / "old" / "x").write_bytes(b"x")
    (root / "bin").mkdir()
    (root / "bin" / "sh").write_bytes(b"sh")
    return root


@pytest.mark.parametrize("kind", list(Compression))
def test_digests_and_size(tmp_path: Path, kind: Compression) -> None:
    tar = build_tar([d("a"), f("a/b", b"hello" * 1000)])
    data = compress(tar, kind)
    src = tmp_path / "blob"
    src.write_bytes(data)
    recorder = RecordingProgress()
    with task(recorder, "apply", len(data)) as progress:
        result = apply_layer(src, tmp_path / "out", progress=progress)
    assert result.entries == 2
    assert result.size == len(tar)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert recorder.tasks["apply"].done == len(data) and recorder.all_ended()
    assert (tmp_path / "out" / "a" / "b").read_bytes() == b"hello" * 1000


def test_stream_source(tmp_path: Path) -> None:
    data = compress(build_tar([f("x", b"1")]), Compression.ZSTD)
    result = apply_layer(io.BytesIO(data), tmp_path / "out")
    assert result.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out" / "x").read_bytes() == b"1"


def test_metadata_restored(tmp_path: Path) -> None:
    members = [
        d("dir", mode=0o750, uid=12, gid=34, mtime=MTIME - 100),
        M("dir/exe", data=b"#!", mode=0o4755, uid=5, gid=6, mtime=MTIME - 5),
        sym("dir/link", "exe"),
        M("dir/fifo", tarfile.FIFOTYPE, mode=0o600),
        M("dir/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        f("dir/attrs", b"", pax={"SCHILY.xattr.user.a": "1", "LIBARCHIVE.xattr.user.b": "2"}),
    ]
    apply_layer(make_blob(tmp_path, members), tmp_path / "out")
    out = tmp_path / "out"
    st = (out / "dir").lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 12, 34)
    assert st.st_mtime == MTIME - 100  # set after its content was written
    st = (out / "dir" / "exe").lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (
        0o4755,
        5,
        6,
        MTIME - 5,
    )
    assert os.readlink(out / "dir" / "link") == "exe"
    assert stat.S_ISFIFO((out / "dir" / "fifo").lstat().st_mode)
    assert (out / "dir" / "null").lstat().st_rdev == os.makedev(1, 3)
    assert os.getxattr(out / "dir" / "attrs", "user.a") == b"1"
    assert os.getxattr(out / "dir" / "attrs", "user.b") == b"2"


def test_overlay_private_xattrs_are_dropped(tmp_path: Path) -> None:
    pax = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.keep": "k"}
    apply_layer(make_blob(tmp_path, [d("a", pax=pax)]), tmp_path / "out")
    assert os.listxattr(tmp_path / "out" / "a") == ["user.keep"]


def test_layer_mode_whiteouts_as_devices(tmp_path: Path) -> None:
    members = [d("etc"), f("etc/.wh.passwd"), f("etc/.wh..wh..opq"), f("etc/new", b"n")]
    apply_layer(make_blob(tmp_path, members), tmp_path / "out")
    st = (tmp_path / "out" / "etc" / "passwd").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(tmp_path / "out" / "etc", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(tmp_path / "out" / "etc")) == ["new", "passwd"]


def test_layer_mode_whiteouts_as_files(tmp_path: Path) -> None:
    members = [f("etc/.wh.passwd"), f("etc/.wh..wh..opq")]
    apply_layer(make_blob(tmp_path, members), tmp_path / "out", options=WH_FILES)
    assert sorted(os.listdir(tmp_path / "out" / "etc")) == [".wh.passwd"]
    assert os.getxattr(tmp_path / "out" / "etc", "user.overlay.opaque") == b"y"


def test_layer_mode_needs_a_new_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        apply_layer(make_blob(tmp_path, [f("x")]), tmp_path / "out")


def test_rootfs_whiteouts_delete(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    members = [f("etc/.wh.passwd"), f("etc/.wh.old"), f(".wh.bin"), f(".wh.never-there")]
    apply_layer(make_blob(tmp_path, members), root, options=ROOTFS)
    assert sorted(os.listdir(root)) == ["etc"]
    assert os.listdir(root / "etc") == []


@pytest.mark.parametrize("marker_first", [True, False])
def test_rootfs_opaque_keeps_this_layers_entries(tmp_path: Path, marker_first: bool) -> None:
    root = _rootfs(tmp_path)
    (root / "etc" / "keepdir").mkdir()
    (root / "etc" / "keepdir" / "old").write_bytes(b"old")
    marker = f("etc/.wh..wh..opq")
    rest = [d("etc"), f("etc/new", b"n"), f("etc/keepdir/fresh", b"f")]
    members = [marker, *rest] if marker_first else [*rest, marker]
    apply_layer(make_blob(tmp_path, members), root, options=ROOTFS)
    assert sorted(os.listdir(root / "etc")) == ["keepdir", "new"]
    assert os.listdir(root / "etc" / "keepdir") == ["fresh"]
    assert (root / "bin" / "sh").exists()


def test_rootfs_replacements(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    members = [
        f("etc", b"now a file"),  # a directory replaced by a file, subtree removed
        sym("bin/sh", "busybox"),  # a file replaced by a symlink
        d("newdir"),
        f("newdir", b"dup"),  # duplicate entry: the later one wins
    ]
    apply_layer(make_blob(tmp_path, members), root, options=ROOTFS)
    assert (root / "etc").read_bytes() == b"now a file"
    assert os.readlink(root / "bin" / "sh") == "busybox"
    assert (root / "newdir").read_bytes() == b"dup"


def test_rootfs_dir_over_dir_merges(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    apply_layer(make_blob(tmp_path, [d("etc", mode=0o700)]), root, options=ROOTFS)
    assert (root / "etc" / "passwd").read_bytes() == b"root"
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o700


def test_hardlinks_share_an_inode(tmp_path: Path) -> None:
    apply_layer(make_blob(tmp_path, [f("a", b"data"), hard("b", "a")]), tmp_path / "out")
    assert (tmp_path / "out" / "a").stat().st_ino == (tmp_path / "out" / "b").stat().st_ino


def test_missing_parents_are_created(tmp_path: Path) -> None:
    apply_layer(make_blob(tmp_path, [f("./a/b/c", b"1")]), tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "c").read_bytes() == b"1"


def test_aufs_metadata_is_skipped(tmp_path: Path) -> None:
    members = [f(".wh..wh.aufs"), d(".wh..wh.plnk"), f(".wh..wh.plnk/1.2"), f("x")]
    apply_layer(make_blob(tmp_path, members), tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["x"]


def test_max_bytes(tmp_path: Path) -> None:
    src = make_blob(tmp_path, [f("big", bytes(1 << 20))], Compression.ZSTD)
    with pytest.raises(LayerFormatError, match="limit"):
        apply_layer(src, tmp_path / "out", options=ApplyOptions(max_bytes=1 << 16))
    assert not (tmp_path / "out").exists()


def test_decompression_bomb_fails_while_streaming(tmp_path: Path) -> None:
    """A tiny zstd blob of a huge tar stops at the limit, long before its end."""
    huge = build_tar([f("zeros", bytes(64 << 20))])
    src = tmp_path / "bomb"
    src.write_bytes(compress(huge, Compression.ZSTD))
    assert src.stat().st_size < 1 << 20
    with pytest.raises(LayerFormatError, match="limit"):
        apply_layer(src, tmp_path / "out", options=ApplyOptions(max_bytes=4 << 20))


def test_max_entries(tmp_path: Path) -> None:
    src = make_blob(tmp_path, [f(str(i)) for i in range(10)])
    with pytest.raises(LayerFormatError, match="entries"):
        apply_layer(src, tmp_path / "out", options=ApplyOptions(max_entries=5))


@pytest.mark.parametrize("kind", list(Compression))
def test_truncated_blob_changes_nothing_in_rootfs(tmp_path: Path, kind: Compression) -> None:
    root = _rootfs(tmp_path)
    before = snapshot(root)
    members = [f("etc/.wh.passwd"), *[f(f"n{i}", os.urandom(4096)) for i in range(8)]]
    data = compress(build_tar(members), kind)
    src = tmp_path / "cut"
    src.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(LayerFormatError):
        apply_layer(src, root, options=ROOTFS)
    assert snapshot(root) == before


def test_garbage_after_first_header_is_an_error(tmp_path: Path) -> None:
    tar = bytearray(build_tar([f("a", b"1"), f("b", b"2")]))
    tar[1024:1536] = b"\x01" * 512  # corrupt the second header's checksum
    src = tmp_path / "bad"
    src.write_bytes(bytes(tar))
    with pytest.raises(LayerFormatError):
        apply_layer(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data", [b"", b"BZh91AY&SY", b"\xfd7zXZ\x00\x00"])
def test_empty_and_unsupported_blobs(tmp_path: Path, data: bytes) -> None:
    src = tmp_path / "blob"
    src.write_bytes(data)
    with pytest.raises(LayerFormatError):
        apply_layer(src, tmp_path / "out")
    assert os.listdir(tmp_path) == ["blob"]


def test_empty_layer(tmp_path: Path) -> None:
    result = apply_layer(make_blob(tmp_path, []), tmp_path / "out")
    assert result.entries == 0
    assert os.listdir(tmp_path / "out") == []
