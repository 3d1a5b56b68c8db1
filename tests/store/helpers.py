"""Small builders for store tests: fake images made of blobs, without real layer tars."""

from __future__ import annotations

import os
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
