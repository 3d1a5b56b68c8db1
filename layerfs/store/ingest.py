"""Blobs arriving for an image the store does not have yet (a registry pull).

:meth:`Store.ingest <layerfs.store.store.Store.ingest>` holds the store's write lock for a
``with`` block and hands out an :class:`Ingest`, which says which blobs are missing and stores
arriving ones, each verified against its descriptor before it appears in ``blobs/``. Garbage
collection cannot run during the block, so what arrives survives until
:meth:`Store.add_image <layerfs.store.store.Store.add_image>`, called in the same block,
records the image that uses it. Blobs may arrive on any thread (a pull fetches several at once).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import BinaryIO

from layerfs.errors import StoreError
from layerfs.progress import Task
from layerfs.store.blobs import BlobInfo, BlobStore
from layerfs.store.oci import Descriptor
from layerfs.types import Digest


class Ingest:
    """Stores arriving blobs while its store's write lock is held (see the module docstring)."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self.closed = False

    def missing(self, descs: Iterable[Descriptor]) -> list[Descriptor]:
        """The descriptors of *descs* whose blobs the store lacks, in their order."""
        self._check_open()
        return [desc for desc in descs if not self._blobs.exists(desc.digest)]

    def put(self, stream: BinaryIO, desc: Descriptor, progress: Task | None = None) -> BlobInfo:
        """Store the blob *desc* from *stream*; *progress* advances by the bytes read.

        Atomic and idempotent: the blob appears complete or not at all, and a blob already
        present is not read again. Raises :class:`~layerfs.errors.DigestMismatchError`, and
        stores nothing, when the bytes do not hash to ``desc.digest`` or are not ``desc.size``
        long.
        """
        self._check_open()
        return self._blobs.put(stream, desc.digest, desc.size, progress)

    def put_bytes(self, data: bytes, digest: Digest) -> BlobInfo:
        """Store *data* (a manifest, say) as the blob *digest*; verified as :meth:`put`."""
        self._check_open()
        return self._blobs.put(io.BytesIO(data), digest, len(data))

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("blobs arrived after the store's ingest ended")
