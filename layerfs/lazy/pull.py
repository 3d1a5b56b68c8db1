"""Lazy pull: an image in the store before its layer blobs are.

:func:`pull_lazy` is a registry pull (:func:`layerfs.registry.pull`: manifest, platform,
config, tag, mirrors) that, for each layer blob the store lacks, reads only the layer's TOC
with range requests (verified against the descriptor's annotation) and records the layer as
a partial layer; a layer without a TOC is recorded too and fetched whole on first access.
:func:`pull_complete` is a plain pull that first completes what a lazy pull left partial,
reusing every byte already fetched. :func:`attach` gives a store the remote that lets
unpack, export, commit, squash, push and container creation complete partial layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from layerfs.errors import NotFoundError
from layerfs.lazy.formats import read_toc, toc_format
from layerfs.lazy.remote import RegistryRemote
from layerfs.registry.client import Options, PullResult, pull
from layerfs.registry.ranges import RangeClient
from layerfs.registry.reference import RemoteReference, parse_remote
from layerfs.store.oci import Descriptor
from layerfs.store.partial import LazyRecord
from layerfs.store.store import Store


class _BlobRanges:
    """One blob of a :class:`RangeClient` as :class:`~layerfs.lazy.source.BlobRanges`."""

    def __init__(self, client: RangeClient, desc: Descriptor) -> None:
        self._client = client
        self._digest = desc.digest
        self.size = desc.size

    def read(self, start: int, end: int) -> bytes:
        return self._client.read(self._digest, start, end)


class _RecordLayers:
    """The :class:`~layerfs.registry.client.PartialLayers` of a lazy pull."""

    def __init__(self, options: Options, prefetch: bool) -> None:
        self.options = options
        self.prefetch = prefetch
        self.added: list[str] = []  # layers this pull recorded

    def __call__(self, store: Store, remote: RemoteReference, layer: Descriptor) -> None:
        existing = store.lazy.record(layer.digest)
        if existing is not None:
            if existing.prefetch != self.prefetch:
                store.lazy.add(replace(existing, prefetch=self.prefetch), None)
            return
        fmt = toc_format(layer.annotations)
        toc: bytes | None = None
        content_end = layer.size
        if fmt is not None:
            with RangeClient(remote, self.options) as client:
                parsed, toc = read_toc(fmt, layer.annotations, _BlobRanges(client, layer))
            content_end = parsed.content_end
        source = f"{remote.registry}/{remote.repository}"
        record = LazyRecord(
            layer,
            fmt.value if fmt else None,
            content_end,
            source,
            self.options.insecure,
            self.prefetch,
        )
        store.lazy.add(record, toc)
        self.added.append(layer.digest)


def pull_lazy(
    store: Store, ref: str, options: Options | None = None, *, prefetch: bool = True
) -> PullResult:
    """Pull *ref* lazily (see the module docstring); *prefetch* ``False`` records that only
    what is read is ever fetched for these layers (no background completion).

    Raises what :func:`layerfs.registry.pull` raises, and :class:`LayerFormatError` or
    :class:`DigestMismatchError` for a TOC that is hostile or does not match its
    annotation; a failed pull leaves no partial layer behind.
    """
    opts = options or Options()
    recorder = _RecordLayers(opts, prefetch)
    try:
        return pull(store, ref, opts, recorder)
    except BaseException:
        with store.writing():
            used = {d.digest for image in store.images() for d in image.layers}
            for digest in recorder.added:
                if digest not in used:
                    store.lazy.forget(digest)
        raise


def pull_complete(store: Store, ref: str, options: Options | None = None) -> PullResult:
    """A plain pull of *ref* that first completes the partial layers of the local image of
    that name (keeping what was fetched), then fetches what is still missing."""
    opts = options or Options()
    remote = parse_remote(ref)
    with contextlib.suppress(NotFoundError):
        image = store.resolve(remote.digest or remote.local_name)
        with attach(store, opts):
            store.ensure_image(image)
    return pull(store, ref, opts)


@contextlib.contextmanager
def attach(store: Store, options: Options | None = None) -> Iterator[RegistryRemote]:
    """Give *store* a :class:`RegistryRemote` for the ``with`` block (closed at its end)."""
    previous = store.remote
    remote = RegistryRemote(options)
    store.remote = remote
    try:
        yield remote
    finally:
        store.remote = previous
        remote.close()
