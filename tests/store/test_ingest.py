"""Store.ingest: how a pull stores blobs, under the write lock, verified, from any thread."""

from __future__ import annotations

import io
import subprocess
import threading
from pathlib import Path

import pytest

from layerfs.errors import DigestMismatchError, StoreError
from layerfs.store.blobs import digest_bytes
from layerfs.store.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
)
from layerfs.store.store import Store


def _desc(data: bytes, media_type: str = OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, digest_bytes(data), len(data))


def test_an_image_arrives_blob_by_blob(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    layers = [b"one", b"two"]
    diff_ids = [digest_bytes(b"diff:" + data) for data in layers]
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": diff_ids}})
    manifest = Manifest(_desc(config, OCI_CONFIG), tuple(_desc(data) for data in layers))
    data = manifest.to_bytes()
    with store.ingest() as ingest:
        wanted = [manifest.config, *manifest.layers]
        assert ingest.missing(wanted) == wanted
        ingest.put(io.BytesIO(config), manifest.config)
        workers = [
            threading.Thread(target=ingest.put, args=(io.BytesIO(blob), desc))
            for blob, desc in zip(layers, manifest.layers, strict=True)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert ingest.missing(wanted) == []
        ingest.put_bytes(data, digest_bytes(data))
        image = store.add_image(Descriptor(OCI_MANIFEST, digest_bytes(data), len(data)), "app:1")
    assert store.resolve("app:1").digest == image.digest
    assert store.read_blob(manifest.layers[1].digest) == b"two"
    with store.open_blob(manifest.config.digest) as stream:
        assert stream.read() == config


def test_a_blob_that_is_not_what_it_claims_is_not_stored(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    claimed = _desc(b"layer")
    with store.ingest() as ingest:
        with pytest.raises(DigestMismatchError):
            ingest.put(io.BytesIO(b"other"), claimed)
        with pytest.raises(DigestMismatchError):
            ingest.put(io.BytesIO(b"layer, longer"), Descriptor(OCI_LAYER_GZIP, claimed.digest, 5))
        assert ingest.missing([claimed]) == [claimed]
    assert not store.has_blob(claimed.digest)


def _lock_is_free(store: Store) -> bool:
    """Whether another process could take the store's write lock now (flock(1) -n)."""
    lock = store.root / "lock"
    return subprocess.run(["flock", "-n", str(lock), "true"], check=False).returncode == 0


def test_the_write_lock_is_held_until_the_block_ends(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    with store.ingest() as ingest:
        assert not _lock_is_free(store)
    assert _lock_is_free(store)
    with pytest.raises(StoreError, match="after the store's ingest ended"):
        ingest.put_bytes(b"late", digest_bytes(b"late"))
