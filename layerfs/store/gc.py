"""Garbage collection: delete blobs and unpacked layers nothing references any more.

Roots are the entries of ``index.json`` (tagged or untagged) and the image of every container.
From each root the walk marks the manifest, its config and its layer blobs, and the image's
``diff_ids`` (its unpacked layers); nested indexes are followed. A container's recorded
``diff_ids`` are marked even if its image's blobs are gone, so gc **never** deletes a layer a
container stacks on. Everything unmarked under ``blobs/sha256`` and ``layers/`` is removed;
layer directories are first renamed into ``tmp/`` so a crash mid-delete cannot leave a
partially deleted layer under its real name. Volumes (``volumes/``) are no concern of gc: it
never deletes one; ``Store.volumes.prune`` deletes those no container names. Partial layers
(``lazy/``) whose blob is unmarked or already local are dropped, and so are cached chunks that
no kept partial layer's TOC names. Call with the store's write lock held.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from layerfs.errors import LayerfsError
from layerfs.store.blobs import fsync_dir
from layerfs.store.containers import Container
from layerfs.store.layout import ImageLayout, remove_dir
from layerfs.store.oci import (
    INDEX_TYPES,
    OCI_MANIFEST,
    Index,
    Manifest,
    config_diff_ids,
    load_json,
)
from layerfs.store.partial import LazyStore
from layerfs.types import Digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a collection removed."""

    blobs: tuple[Digest, ...] = ()
    layers: tuple[Digest, ...] = ()
    bytes_freed: int = 0


@dataclass(slots=True)
class _Marks:
    blobs: set[Digest] = field(default_factory=set)
    diff_ids: set[Digest] = field(default_factory=set)


def reachable(
    layout: ImageLayout, containers: Iterable[Container]
) -> tuple[set[Digest], set[Digest]]:
    """(blob digests, layer diff_ids) that must be kept."""
    marks = _Marks()
    for desc in layout.read_index().manifests:
        _mark(layout, desc.digest, desc.media_type, marks)
    for container in containers:
        marks.diff_ids.update(container.diff_ids)
        if layout.blobs.exists(container.image):
            _mark(layout, container.image, OCI_MANIFEST, marks)
    return marks.blobs, marks.diff_ids


def _mark(layout: ImageLayout, digest: Digest, media_type: str, marks: _Marks) -> None:
    if digest in marks.blobs:
        return
    marks.blobs.add(digest)
    if not layout.blobs.exists(digest):
        return
    try:
        data = layout.blobs.get(digest)
        if media_type in INDEX_TYPES:
            for child in Index.from_bytes(data).manifests:
                _mark(layout, child.digest, child.media_type, marks)
            return
        manifest = Manifest.from_bytes(data)
    except LayerfsError as exc:
        # A blob we cannot read keeps itself but pins nothing else; say so and go on.
        log.warning("gc: cannot read %s: %s", digest, exc)
        return
    marks.blobs.add(manifest.config.digest)
    marks.blobs.update(layer.digest for layer in manifest.layers)
    with contextlib.suppress(LayerfsError):
        config = load_json(layout.blobs.get(manifest.config.digest), "config")
        marks.diff_ids.update(config_diff_ids(config))


def collect(
    layout: ImageLayout, containers: Iterable[Container], lazy: LazyStore | None = None
) -> GcResult:
    """Remove every blob, unpacked layer and partial layer not reachable from the index or a
    container; chunks only partial layers that are still kept may read stay."""
    keep_blobs, keep_layers = reachable(layout, containers)
    freed_lazy = _collect_lazy(lazy, keep_blobs, layout) if lazy is not None else 0
    removed_blobs: list[Digest] = []
    freed = 0
    for digest in layout.blobs.list():
        if digest not in keep_blobs:
            freed += layout.blobs.stat(digest).size
            layout.blobs.delete(digest)
            removed_blobs.append(digest)
    if removed_blobs:
        fsync_dir(layout.blobs.dir)
    removed_layers = [d for d in _layer_ids(layout.layers_dir) if d not in keep_layers]
    for diff_id in removed_layers:
        remove_dir(layout.layer_dir(diff_id), layout.tmp_dir)
    if removed_blobs or removed_layers:
        log.info("gc: removed %d blobs, %d layers", len(removed_blobs), len(removed_layers))
    return GcResult(tuple(removed_blobs), tuple(removed_layers), freed + freed_lazy)


def _collect_lazy(lazy: LazyStore, keep: set[Digest], layout: ImageLayout) -> int:
    """Drop partial layers nothing reaches (or whose blob is local), then unneeded chunks."""
    wanted: set[str] = set()
    for record in lazy.records():
        digest = record.descriptor.digest
        if digest not in keep or layout.blobs.exists(digest):
            lazy.forget(digest)
            continue
        wanted.update(lazy.chunk_digests(record))
    return sum(lazy.chunks.delete(d) for d in lazy.chunks.list() if d not in wanted)


def _layer_ids(layers_dir: Path) -> list[Digest]:
    try:
        names = sorted(os.listdir(layers_dir))
    except FileNotFoundError:
        return []
    return [Digest(f"sha256:{n}") for n in names if len(n) == 64 and _is_hex(n)]


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
