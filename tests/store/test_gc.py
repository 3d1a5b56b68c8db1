"""Garbage collection keeps what the index or a container uses and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerfs.store import gc
from layerfs.store.containers import ContainerStore
from layerfs.store.images import with_tag
from layerfs.store.layout import ImageLayout
from layerfs.store.oci import Index

from .helpers import fake_image, fake_layer_dir


@pytest.fixture
def layout(tmp_path: Path) -> ImageLayout:
    layout = ImageLayout(tmp_path / "root")
    layout.ensure()
    return layout


def test_unreferenced_blobs_and_layers_go(layout: ImageLayout) -> None:
    kept, kept_ids = fake_image(layout.blobs, [b"base", b"top"])
    dropped, dropped_ids = fake_image(layout.blobs, [b"base", b"other"])
    for diff_id in {*kept_ids, *dropped_ids}:
        fake_layer_dir(layout, diff_id)
    layout.write_index(with_tag(Index(), kept, "keep:1"))
    stray = layout.blobs.put_bytes(b"stray").digest

    result = gc.collect(layout, [])

    assert dropped.digest in result.blobs and stray in result.blobs
    assert set(result.layers) == {dropped_ids[1]}
    assert layout.blobs.exists(kept.digest)
    assert layout.blobs.get(kept.digest)
    for diff_id in kept_ids:  # shared base layer stays
        assert layout.layer_dir(diff_id).is_dir()
    assert not layout.layer_dir(dropped_ids[1]).exists()
    assert result.bytes_freed > 0
    assert gc.collect(layout, []) == gc.GcResult()


def test_container_keeps_image_without_tags(layout: ImageLayout) -> None:
    image, diff_ids = fake_image(layout.blobs, [b"l1", b"l2"])
    for diff_id in diff_ids:
        fake_layer_dir(layout, diff_id)
    containers = ContainerStore(layout.containers_dir, layout.tmp_dir)
    box = containers.create(image.digest, "img:1", diff_ids, "box")
    # The image is in no index entry at all: only the container refers to it.
    result = gc.collect(layout, containers.list())
    assert result == gc.GcResult()
    assert all(layout.layer_dir(d).is_dir() for d in diff_ids)
    containers.remove(box)
    result = gc.collect(layout, containers.list())
    assert set(result.layers) == set(diff_ids)
    assert image.digest in result.blobs


def test_container_layers_survive_even_if_blobs_are_gone(layout: ImageLayout) -> None:
    image, diff_ids = fake_image(layout.blobs, [b"x"])
    fake_layer_dir(layout, diff_ids[0])
    containers = ContainerStore(layout.containers_dir, layout.tmp_dir)
    containers.create(image.digest, None, diff_ids, None)
    layout.blobs.delete(image.digest)
    gc.collect(layout, containers.list())
    assert layout.layer_dir(diff_ids[0]).is_dir()


def test_gc_leaves_nothing_in_tmp(layout: ImageLayout) -> None:
    _, diff_ids = fake_image(layout.blobs, [b"gone"])
    fake_layer_dir(layout, diff_ids[0])
    gc.collect(layout, [])
    assert list(layout.tmp_dir.iterdir()) == []
    assert list(layout.layers_dir.iterdir()) == []
