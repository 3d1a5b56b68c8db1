"""Helpers for store tests: fake images made of blobs, tree descriptions, the CLI."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

from layerfs.store.blobs import BlobStore, digest_bytes
from layerfs.store.layout import ImageLayout
from layerfs.store.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
)
from layerfs.types import Digest

REPO = Path(__file__).resolve().parents[2]


def fake_image(blobs: BlobStore, layer_contents: list[bytes]) -> tuple[Descriptor, list[Digest]]:
    """Store a manifest, config and opaque layer blobs; return the manifest and the diff_ids.

    The layer blobs are not tars, and the diff_ids are made up: good for index and gc tests,
    which never unpack.
    """
    layers = [blobs.put_bytes(data) for data in layer_contents]
    diff_ids = [digest_bytes(b"diff:" + data) for data in layer_contents]
    config = {"architecture": "amd64", "os": "linux"}
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}  # type: ignore[assignment]
    config_info = blobs.put_bytes(canonical_json(config))
    manifest = Manifest(
        Descriptor(OCI_CONFIG, config_info.digest, config_info.size),
        tuple(Descriptor(OCI_LAYER_GZIP, info.digest, info.size) for info in layers),
    )
    info = blobs.put_bytes(manifest.to_bytes())
    return Descriptor(OCI_MANIFEST, info.digest, info.size), diff_ids


def fake_layer_dir(layout: ImageLayout, diff_id: str) -> Path:
    """An unpacked-layer directory with one file, as gc sees it."""
    path = layout.layer_dir(diff_id)
    path.mkdir(parents=True)
    (path / "file").write_bytes(diff_id.encode())
    return path


def tree_files(root: Path) -> list[str]:
    """Every path under *root*, relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def meta_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every object below *root*, and *root* itself as ``/``: type, mode, owner, mtime, xattrs,
    size and content hash or link target, device number, and for hard links the first name
    of the inode in sorted walk order (so two trees with the same links agree)."""
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [Path(dirpath) / name for name in sorted(dirnames + filenames)]
    out: dict[str, tuple[object, ...]] = {}
    first_name: dict[tuple[int, int], str] = {}
    for path in paths:
        rel = "/" + str(path.relative_to(root)) if path != root else "/"
        st = os.lstat(path)
        content: object = None
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        link = None
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            link = first_name.setdefault((st.st_dev, st.st_ino), rel)
        attrs = sorted(
            (a, os.getxattr(path, a, follow_symlinks=False))
            for a in os.listxattr(path, follow_symlinks=False)
            if not a.startswith(("trusted.overlay.", "user.overlay."))
        )
        mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
        out[rel] = (stat.S_IFMT(st.st_mode), mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                    tuple(attrs), content, st.st_rdev, link)  # fmt: skip
    return out


def run_layerfs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run this checkout's ``layerfs`` command in a subprocess, capturing its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "from layerfs.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
