"""Images as the store sees them: a manifest, its config, and the names in ``index.json``.

An image's id is its **manifest digest** (``sha256:<hex>``), the digest ``name@sha256:...``
references pin and registries serve; ``layerfs images`` shows its first 12 hex digits. The
functions here are pure: they read blobs and build new index/config documents; the
:class:`~layerfs.store.store.Store` facade writes them under its lock.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from layerfs.errors import StoreError
from layerfs.store.blobs import BlobStore
from layerfs.store.oci import (
    ANNOTATION_REF_NAME,
    MANIFEST_TYPES,
    Descriptor,
    Index,
    Manifest,
    config_diff_ids,
    load_json,
)
from layerfs.types import Digest

SHORT_ID_LEN = 12  # hex digits shown for an image id


@dataclass(frozen=True, slots=True)
class Image:
    """One image of the store: its manifest (by digest), config and the tags naming it."""

    digest: Digest
    manifest_size: int
    manifest: Manifest
    config: Mapping[str, Any]
    names: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The manifest digest's hex digits."""
        return self.digest.split(":", 1)[1]

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID_LEN]

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        """Layer descriptors, bottom-most first (manifest order)."""
        return self.manifest.layers

    @property
    def diff_ids(self) -> list[Digest]:
        """Digests of the uncompressed layer tars, bottom-most first."""
        return config_diff_ids(self.config, f"config of image {self.digest}")

    @property
    def created(self) -> str | None:
        value = self.config.get("created")
        return value if isinstance(value, str) else None

    @property
    def size(self) -> int:
        """Bytes of the stored (compressed) layers plus config."""
        return self.manifest.config.size + sum(layer.size for layer in self.layers)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.manifest.media_type, self.digest, self.manifest_size)


def load_image(blobs: BlobStore, digest: Digest, names: Iterable[str] = ()) -> Image:
    """Read and check manifest and config of *digest* (layers must match ``diff_ids``)."""
    data = blobs.get(digest)
    manifest = Manifest.from_bytes(data, f"manifest {digest}")
    config = load_json(blobs.get(manifest.config.digest), f"config {manifest.config.digest}")
    image = Image(digest, len(data), manifest, config, tuple(sorted(names)))
    if len(image.diff_ids) != len(manifest.layers):
        raise StoreError(
            f"image {digest}: {len(manifest.layers)} layers but "
            f"{len(image.diff_ids)} rootfs.diff_ids"
        )
    return image


def names_by_digest(index: Index) -> dict[Digest, list[str]]:
    """Manifest digest -> the ``name:tag`` annotations of its index entries (untagged: [])."""
    out: dict[Digest, list[str]] = {}
    for desc in index.manifests:
        if desc.media_type not in MANIFEST_TYPES:
            continue
        names = out.setdefault(desc.digest, [])
        if desc.ref_name:
            names.append(desc.ref_name)
    return out


def digest_of_name(index: Index, tagged: str) -> Digest | None:
    """The manifest digest tagged *tagged* (``name:tag``), or ``None``."""
    for desc in index.manifests:
        if desc.ref_name == tagged and desc.media_type in MANIFEST_TYPES:
            return desc.digest
    return None


def with_tag(index: Index, target: Descriptor, tagged: str) -> Index:
    """*index* with *tagged* pointing at *target* (moved if it named another image).

    An untagged entry for the same manifest is dropped, since the tag now keeps it alive.
    """
    kept = [
        desc
        for desc in index.manifests
        if desc.ref_name != tagged and not (desc.digest == target.digest and not desc.ref_name)
    ]
    entry = Descriptor(target.media_type, target.digest, target.size, {ANNOTATION_REF_NAME: tagged})
    return replace(index, manifests=(*kept, entry))


def with_untagged(index: Index, target: Descriptor) -> Index:
    """*index* holding *target* without a name, unless some entry already holds it."""
    if any(desc.digest == target.digest for desc in index.manifests):
        return index
    entry = Descriptor(target.media_type, target.digest, target.size)
    return replace(index, manifests=(*index.manifests, entry))


def without_tag(index: Index, tagged: str) -> Index:
    return replace(index, manifests=tuple(d for d in index.manifests if d.ref_name != tagged))


def without_digest(index: Index, digest: Digest) -> Index:
    return replace(index, manifests=tuple(d for d in index.manifests if d.digest != digest))


def now_rfc3339() -> str:
    """The current UTC time as OCI configs write it (``2024-01-02T03:04:05.123456Z``)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def config_with_layer(
    base: Mapping[str, Any], diff_id: Digest, *, created_by: str, comment: str | None
) -> dict[str, Any]:
    """A copy of *base* with one more layer (*diff_id*) and a history entry describing it."""
    config = copy.deepcopy(dict(base))
    created = now_rfc3339()
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [*config_diff_ids(config), diff_id]
    entry: dict[str, Any] = {"created": created, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    history = config.get("history")
    config["history"] = [*(history if isinstance(history, list) else []), entry]
    config["created"] = created
    return config


def config_squashed(base: Mapping[str, Any], diff_id: Digest, *, created_by: str) -> dict[str, Any]:
    """A copy of *base* whose whole rootfs is the single layer *diff_id*."""
    config = copy.deepcopy(dict(base))
    created = now_rfc3339()
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    config["history"] = [{"created": created, "created_by": created_by}]
    config["created"] = created
    return config


def new_manifest(base: Manifest, config: Descriptor, layers: Iterable[Descriptor]) -> Manifest:
    """An OCI manifest for *config* and *layers*, keeping *base*'s annotations."""
    return Manifest(config, tuple(layers), base.to_oci().media_type, base.annotations)
