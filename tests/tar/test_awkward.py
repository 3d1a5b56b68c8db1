"""Awkward but valid layers: odd names, long names, empty files, links, sparse files, xattrs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from layerfs.tar import ApplyMode, ApplyOptions, apply_layer
from tests.tar.tarbuild import M, build_tar, d, f, hard, sym

pytestmark = pytest.mark.timeout(60)

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
