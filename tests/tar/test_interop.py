"""Interop with GNU tar, zstd and gzip: same trees as ``tar -x``, output readable by them."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from layerfs.tar import (
    ApplyMode,
    ApplyOptions,
    Compression,
    CreateOptions,
    apply_layer,
    create_layer,
)
from tests.tar.tarbuild import snapshot

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("tar", "zstd", "gzip")), reason="needs tar, zstd, gzip"
    ),
]


def _sample_tree(root: Path) -> Path:
    (root / "etc" / "ssl").mkdir(parents=True)
    (root / "etc" / "hostname").write_bytes(b"box\n")
    (root / "etc" / "ssl" / "cert.pem").write_bytes(os.urandom(5000))
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + os.urandom(300_000))
    os.chmod(root / "usr" / "bin" / "tool", 0o4755)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool2")
    os.symlink("tool", root / "usr" / "bin" / "alias")
    os.symlink("/nonexistent/abs", root / "usr" / "dangling")
    (root / "empty").write_bytes(b"")
    (root / ("é" * 120)).write_bytes(b"long unicode")
    (root / "a" / ("deep" * 30)).mkdir(parents=True)
    (root / "a" / ("deep" * 30) / "x").write_bytes(b"x")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chown(root / "etc" / "hostname", 1000, 1001)
    os.setxattr(root / "etc" / "hostname", "user.note", b"hello")
    os.chmod(root / "etc" / "ssl", 0o700)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(Path(dirpath) / name, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    return root


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_rootfs_apply_matches_gnu_tar(tmp_path: Path, fmt: str) -> None:
    src = _sample_tree(tmp_path / "src")
    if fmt == "ustar":
        shutil.rmtree(src / "a")  # ustar cannot hold the long name
        os.unlink(src / ("é" * 120))
    blob = tmp_path / "layer.tar"
    subprocess.run(
        [
            "tar",
            f"--format={fmt}",
            "--xattrs",
            "--xattrs-include=user.*",
            "-C",
            str(src),
            "-cf",
            str(blob),
            ".",
        ],
        check=True,
    )
    by_tar, by_us = tmp_path / "by-tar", tmp_path / "by-us"
    by_tar.mkdir()
    by_us.mkdir()
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=user.*",
            "--same-owner",
            "-p",
            "-C",
            str(by_tar),
            "-xf",
            str(blob),
        ],
        check=True,
    )
    apply_layer(blob, by_us, options=ApplyOptions(mode=ApplyMode.ROOTFS))
    assert snapshot(by_us) == snapshot(by_tar)
    assert snapshot(by_us) == snapshot(src)


@pytest.mark.parametrize(
    ("kind", "decompress"),
    [
        (Compression.NONE, ["cat"]),
        (Compression.GZIP, ["gzip", "-dc"]),
        (Compression.ZSTD, ["zstd", "-dcq"]),
    ],
)
def test_created_layers_read_by_standard_tools(
    tmp_path: Path, kind: Compression, decompress: list[str]
) -> None:
    src = _sample_tree(tmp_path / "src")
    os.mknod(src / "etc" / "gone", stat.S_IFCHR, 0)
    blob = tmp_path / "layer"
    with open(blob, "wb") as out:
        create_layer(src, out, options=CreateOptions(compression=kind))
    plain = subprocess.run([*decompress, str(blob)], check=True, capture_output=True).stdout
    listing = subprocess.run(
        ["tar", "-t"], input=plain, check=True, capture_output=True
    ).stdout.decode()
    names = listing.splitlines()
    assert "etc/.wh.gone" in names
    assert "usr/bin/tool2" in names
    assert f"a/{'deep' * 30}/x" in names
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=user.*", "--same-owner", "-p", "-x", "-C", str(out)],
        input=plain,
        check=True,
    )
    os.unlink(out / "etc" / ".wh.gone")
    os.unlink(src / "etc" / "gone")
    expected = snapshot(src, dir_mtimes=False)
    assert snapshot(out, dir_mtimes=False) == expected
    ino = (out / "usr" / "bin" / "tool").stat().st_ino
    assert (out / "usr" / "bin" / "tool2").stat().st_ino == ino


def test_whiteout_layer_onto_a_tree(tmp_path: Path) -> None:
    """A whiteout made by overlayfs deletes the file it names and nothing else."""
    base = _sample_tree(tmp_path / "base")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "hostname", stat.S_IFCHR, 0)
    (upper / "etc" / "motd").write_bytes(b"hi")
    blob = tmp_path / "layer.tar.zst"
    with open(blob, "wb") as out:
        create_layer(upper, out)
    apply_layer(blob, base, options=ApplyOptions(mode=ApplyMode.ROOTFS))
    assert not (base / "etc" / "hostname").exists()
    assert (base / "etc" / "motd").read_bytes() == b"hi"
    assert (base / "etc" / "ssl" / "cert.pem").exists()
