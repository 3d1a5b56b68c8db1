"""The store root as an OCI image layout, plus layerfs's own state beside it.

::

    ROOT/
      oci-layout            {"imageLayoutVersion": "1.0.0"}
      index.json            tagged manifests (org.opencontainers.image.ref.name = "name:tag")
      blobs/sha256/<hex>    manifests, configs, compressed layers
      layers/<hex>/         each layer unpacked once, named by its diff_id, overlayfs lower format
      containers/<id>/      upper/, work/, container.json
      volumes/<name>/       volume.json, data/ (what the container sees at the volume's path)
      lazy/                 partial layers of lazily pulled images (layerfs.store.partial)
      tmp/                  staging on the same filesystem; swept when the store is opened
      lock                  fcntl.flock: held exclusively by every writer

Because the root is a plain image layout, ``skopeo copy oci:ROOT:name:tag ...`` and
``umoci unpack --image ROOT:name:tag`` read it directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from layerfs.errors import StoreError
from layerfs.store.blobs import BlobStore, atomic_file, fsync_dir
from layerfs.store.oci import OCI_LAYOUT_VERSION, Index

OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"


class ImageLayout:
    """Paths of a store root and atomic access to its ``index.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.layers_dir = root / "layers"
        self.containers_dir = root / "containers"
        self.volumes_dir = root / "volumes"
        self.tmp_dir = root / "tmp"
        self.lock_file = root / "lock"
        self.index_file = root / INDEX_FILE
        self.blobs = BlobStore(self.blobs_dir, self.tmp_dir)

    def ensure(self) -> None:
        """Create whatever part of the layout is missing; refuse a foreign layout version."""
        dirs = (self.blobs.dir, self.layers_dir, self.containers_dir, self.volumes_dir)
        for path in (*dirs, self.tmp_dir):
            path.mkdir(parents=True, exist_ok=True)
        marker = self.root / OCI_LAYOUT_FILE
        if marker.exists():
            check_layout_marker(self.root)
        else:
            self._write_atomic(marker, json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        if not self.index_file.exists():
            self.write_index(Index())

    def read_index(self) -> Index:
        """The current ``index.json`` (an empty index if the file is missing)."""
        try:
            data = self.index_file.read_bytes()
        except FileNotFoundError:
            return Index()
        return Index.from_bytes(data, str(self.index_file))

    def write_index(self, index: Index) -> None:
        """Replace ``index.json`` atomically (temp file in ``tmp/``, fsync, rename)."""
        self._write_atomic(self.index_file, index.to_bytes().decode())

    def sweep_tmp(self) -> int:
        """Delete everything in ``tmp/``: left over by a writer that died. Call under the lock."""
        count = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.tmp_dir):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                count += 1
        return count

    def layer_dir(self, diff_id: str) -> Path:
        """Where the layer with *diff_id* is (or will be) unpacked."""
        return self.layers_dir / diff_id.split(":", 1)[1]

    def _write_atomic(self, target: Path, text: str) -> None:
        with atomic_file(target, self.tmp_dir) as out:
            out.write(text.encode())


def remove_dir(path: Path, tmp_dir: Path) -> None:
    """Delete the directory *path*: renamed into *tmp_dir* first, so that a crash never leaves
    it half-deleted under its name (the next sweep of ``tmp/`` finishes the job)."""
    trash = Path(tempfile.mkdtemp(prefix="rm-", dir=tmp_dir))
    os.rename(path, trash / path.name)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


def check_layout_marker(root: Path) -> None:
    """Raise :class:`StoreError` unless *root*/oci-layout names a version layerfs reads."""
    try:
        marker = json.loads((root / OCI_LAYOUT_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root}: not an OCI image layout ({exc})") from exc
    version = marker.get("imageLayoutVersion") if isinstance(marker, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise StoreError(f"{root}: unsupported image layout version {version!r}")
