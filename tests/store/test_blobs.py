"""Blobs: verified, atomic, idempotent puts; verifying reads; list and delete."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from layerfs.errors import DigestMismatchError, NotFoundError, StoreError
from layerfs.progress import task
from layerfs.store.blobs import BlobStore, digest_bytes
from tests.progress import RecordingProgress


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    (tmp_path / "tmp").mkdir()
    return BlobStore(tmp_path / "blobs", tmp_path / "tmp")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Exploding(io.RawIOBase):
    """Yields some bytes, then fails like a dropped connection."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._data:
            chunk, self._data = self._data, b""
            return chunk
        raise ConnectionResetError("gone")


def test_put_and_get(blobs: BlobStore) -> None:
    info = blobs.put_bytes(b"hello")
    assert info.digest == _sha(b"hello") and info.size == 5
    assert blobs.get(info.digest) == b"hello"
    assert blobs.path(info.digest).name == hashlib.sha256(b"hello").hexdigest()
    assert blobs.stat(info.digest).size == 5
    assert list(blobs.list()) == [info.digest]


def test_put_with_expected_digest_verifies(blobs: BlobStore) -> None:
    with pytest.raises(DigestMismatchError):
        blobs.put(io.BytesIO(b"evil"), _sha(b"good"), 4)
    assert list(blobs.list()) == []
    assert os.listdir(blobs.tmp_dir) == []


def test_put_with_wrong_size_is_refused(blobs: BlobStore) -> None:
    with pytest.raises(DigestMismatchError):
        blobs.put(io.BytesIO(b"good"), _sha(b"good"), 5)
    assert not blobs.exists(_sha(b"good"))


def test_put_is_idempotent_and_does_not_reread(blobs: BlobStore) -> None:
    first = blobs.put_bytes(b"data")
    # A stream that would fail if read: the blob exists, so put must not touch it.
    again = blobs.put(_Exploding(b""), first.digest, 4)  # type: ignore[arg-type]
    assert again == first


def test_interrupted_put_leaves_nothing(blobs: BlobStore) -> None:
    with pytest.raises(ConnectionResetError):
        blobs.put(_Exploding(b"partial"), _sha(b"partial and more"))  # type: ignore[arg-type]
    assert list(blobs.list()) == []
    assert os.listdir(blobs.tmp_dir) == []


def test_reader_detects_corruption(blobs: BlobStore) -> None:
    info = blobs.put_bytes(b"original content")
    path = blobs.path(info.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered content")
    with pytest.raises(DigestMismatchError):
        blobs.get(info.digest)


def test_reader_detects_truncation(blobs: BlobStore) -> None:
    info = blobs.put_bytes(b"0123456789")
    blobs.path(info.digest).write_bytes(b"01234")
    with pytest.raises(DigestMismatchError):
        blobs.get(info.digest)


def test_missing_and_malformed(blobs: BlobStore) -> None:
    with pytest.raises(NotFoundError):
        blobs.get(_sha(b"nope"))
    with pytest.raises(NotFoundError):
        blobs.stat(_sha(b"nope"))
    with pytest.raises(StoreError):
        blobs.path("sha256:../../etc/passwd")
    with pytest.raises(StoreError):
        blobs.path("md5:abcd")


def test_delete_and_list_skip_strays(blobs: BlobStore) -> None:
    a = blobs.put_bytes(b"a")
    b = blobs.put_bytes(b"b")
    (blobs.dir / "not-a-digest").write_bytes(b"x")
    assert sorted(blobs.list()) == sorted([a.digest, b.digest])
    blobs.delete(a.digest)
    blobs.delete(a.digest)  # deleting twice is fine
    assert list(blobs.list()) == [b.digest]


def test_adopt_moves_a_finished_file(blobs: BlobStore) -> None:
    path = blobs.tmp_dir / "layer"
    path.write_bytes(b"layer bytes")
    info = blobs.adopt(path, digest_bytes(b"layer bytes"))
    assert not path.exists() and blobs.get(info.digest) == b"layer bytes"
    bad = blobs.tmp_dir / "bad"
    bad.write_bytes(b"x")
    with pytest.raises(DigestMismatchError):
        blobs.adopt(bad, digest_bytes(b"y"))
    assert not bad.exists()


def test_large_stream_is_hashed_in_chunks(blobs: BlobStore) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    recorder = RecordingProgress()
    with task(recorder, "put", len(data)) as progress:
        info = blobs.put(io.BytesIO(data), _sha(data), len(data), progress=progress)
    seen = recorder.tasks["put"].amounts
    assert sum(seen) == len(data) and len(seen) > 1
    with blobs.open(info.digest) as stream:
        assert stream.read() == data
