"""The store root as an OCI image layout: marker, atomic index, tmp sweep, write lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerfs.errors import StoreError
from layerfs.store.images import (
    digest_of_name,
    names_by_digest,
    with_tag,
    with_untagged,
    without_digest,
    without_tag,
)
from layerfs.store.layout import ImageLayout
from layerfs.store.lock import StoreLock
from layerfs.store.oci import ANNOTATION_REF_NAME, Index

from .helpers import fake_image


@pytest.fixture
def layout(tmp_path: Path) -> ImageLayout:
    layout = ImageLayout(tmp_path / "root")
    layout.ensure()
    return layout


def test_ensure_creates_a_valid_layout(layout: ImageLayout) -> None:
    root = layout.root
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((root / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    }
    for sub in ("blobs/sha256", "layers", "containers", "tmp"):
        assert (root / sub).is_dir()
    layout.ensure()  # idempotent


def test_foreign_layout_version_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(StoreError):
        ImageLayout(root).ensure()


def test_index_tagging(layout: ImageLayout) -> None:
    a, _ = fake_image(layout.blobs, [b"one"])
    b, _ = fake_image(layout.blobs, [b"two"])
    index = with_untagged(Index(), a)
    index = with_tag(index, a, "x:1")
    assert len(index.manifests) == 1, "the tag replaces the untagged entry"
    index = with_tag(index, a, "x:2")
    index = with_tag(index, b, "x:1")  # moves x:1 to b
    assert digest_of_name(index, "x:1") == b.digest
    assert names_by_digest(index) == {a.digest: ["x:2"], b.digest: ["x:1"]}
    assert with_untagged(index, a) == index
    index = without_tag(index, "x:2")
    assert a.digest not in names_by_digest(index)
    assert without_digest(index, b.digest).manifests == ()
    layout.write_index(index)
    assert layout.read_index() == index
    raw = json.loads(layout.index_file.read_text())
    assert raw["manifests"][0]["annotations"] == {ANNOTATION_REF_NAME: "x:1"}


def test_index_write_is_atomic_rename(layout: ImageLayout) -> None:
    before = os.stat(layout.index_file).st_ino
    layout.write_index(Index())
    assert os.stat(layout.index_file).st_ino != before
    assert os.listdir(layout.tmp_dir) == []


def test_sweep_tmp(layout: ImageLayout) -> None:
    (layout.tmp_dir / "blob-x").write_bytes(b"partial")
    (layout.tmp_dir / "layer-y" / "layer").mkdir(parents=True)
    assert layout.sweep_tmp() == 2
    assert os.listdir(layout.tmp_dir) == []


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(30)
def test_lock_excludes_other_processes_and_is_reentrant(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path / "lock")
    with lock.held(), lock.held():
        pass  # re-entrant in one process
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert not lock.try_acquire()
    finally:
        holder.communicate("")
    assert lock.try_acquire()
    lock.release()
