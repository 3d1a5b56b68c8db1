"""Import/export round trips: OCI layouts and docker-archive tarballs, plain or compressed."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from pathlib import Path

import pytest

from layerfs.errors import StoreError
from layerfs.store.store import Store

from .builders import BASE, TOP, Image, write_docker_archive, write_oci_layout


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "store")
    write_oci_layout(tmp_path / "src", [Image("app:1", [BASE, TOP])])
    store.import_path(tmp_path / "src")
    return store


def test_oci_export_then_import_is_identical(store: Store, tmp_path: Path) -> None:
    original = store.resolve("app:1")
    store.export("app:1", tmp_path / "out")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "app:1"}
    other = Store.open(tmp_path / "other")
    (copy,) = other.import_path(tmp_path / "out")
    assert copy.digest == original.digest and copy.names == ("app:1",)
    assert other.blobs.get(copy.digest) == store.blobs.get(original.digest)


def test_oci_export_adds_to_an_existing_layout(store: Store, tmp_path: Path) -> None:
    store.tag("app:1", "app:2")
    store.export("app:1", tmp_path / "out")
    store.export("app:2", tmp_path / "out")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    names = sorted(
        m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
    )
    assert names == ["app:1", "app:2"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(StoreError):
        store.export("app:1", tmp_path / "junk")


def test_docker_archive_export_then_import(store: Store, tmp_path: Path) -> None:
    original = store.resolve("app:1")
    store.export("app:1", tmp_path / "app.tar", format="docker-archive")
    with tarfile.open(tmp_path / "app.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["app:1"]
    assert manifest[0]["Layers"] == [f"{d[7:]}/layer.tar" for d in original.diff_ids]
    other = Store.open(tmp_path / "other")
    (copy,) = other.import_path(tmp_path / "app.tar")
    assert copy.names == ("app:1",)
    assert copy.manifest.config.digest == original.manifest.config.digest
    assert copy.diff_ids == original.diff_ids
    # Uncompressed layers: the blob digest is the diff_id.
    assert [d.digest for d in copy.layers] == copy.diff_ids
    other.unpack("app:1", tmp_path / "a")
    store.unpack("app:1", tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "a" / "etc")) == sorted(os.listdir(tmp_path / "b" / "etc"))


@pytest.mark.parametrize("blob_paths", [False, True], ids=["legacy", "blob-paths"])
@pytest.mark.parametrize("as_dir", [False, True], ids=["tarball", "directory"])
def test_docker_save_import(tmp_path: Path, blob_paths: bool, as_dir: bool) -> None:
    images_in = [Image("x/one:1", [BASE]), Image("x/two:2", [BASE, TOP])]
    write_docker_archive(tmp_path / "save.tar", images_in, blob_paths=blob_paths)
    source = tmp_path / "save.tar"
    if as_dir:
        with tarfile.open(source) as tar:
            tar.extractall(tmp_path / "save", filter="data")
        source = tmp_path / "save"
    store = Store.open(tmp_path / "store")
    images = store.import_path(source)
    assert [im.names for im in images] == [("x/one:1",), ("x/two:2",)]
    one, two = images
    assert store.layer_dirs(one) == store.layer_dirs(two)[1:]
    (picked,) = store.import_path(source, "mine:2", ref_name="x/two:2")
    assert picked.digest == two.digest and "mine:2" in picked.names


def test_compressed_docker_archive_and_oci_archive(store: Store, tmp_path: Path) -> None:
    store.export("app:1", tmp_path / "app.tar", format="docker-archive")
    (tmp_path / "app.tar.gz").write_bytes(gzip.compress((tmp_path / "app.tar").read_bytes()))
    other = Store.open(tmp_path / "other")
    assert other.import_path(tmp_path / "app.tar.gz")[0].names == ("app:1",)
    store.export("app:1", tmp_path / "layout")
    with tarfile.open(tmp_path / "layout.tar", "w") as tar:
        tar.add(tmp_path / "layout", arcname=".")
    third = Store.open(tmp_path / "third")
    (image,) = third.import_path(tmp_path / "layout.tar", "renamed:1")
    assert image.digest == store.resolve("app:1").digest
    assert image.names == ("renamed:1",)
    assert list(third.layout.tmp_dir.iterdir()) == []


def test_import_of_something_else_fails(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError):
        store.import_path(tmp_path / "empty")
    with tarfile.open(tmp_path / "x.tar", "w"):
        pass
    with pytest.raises(StoreError):
        store.import_path(tmp_path / "x.tar")
