"""OCI (and Docker v2 schema 2) JSON documents: descriptors, manifests, indexes, media types.

Documents are parsed into small frozen dataclasses; the image *config* stays a plain dict so
that fields layerfs does not know (``config.Env``, vendor keys) survive a commit untouched.
Everything layerfs writes is OCI; Docker media types are read and mapped to their OCI
equivalents on import (:func:`to_oci_media_type`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from layerfs.errors import StoreError
from layerfs.store.refs import DIGEST_RE
from layerfs.types import Digest

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_ZSTD,
        DOCKER_FOREIGN_GZIP,
    }
)
_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
    DOCKER_FOREIGN_GZIP: OCI_LAYER_NONDIST_GZIP,
}


def to_oci_media_type(media_type: str) -> str:
    """The OCI media type equivalent to a Docker one; OCI types are returned unchanged."""
    return _DOCKER_TO_OCI.get(media_type, media_type)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Compact JSON in the key order given: the bytes layerfs hashes and stores."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object or raise :class:`StoreError` naming *what* was being read."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{what}: invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreError(f"{what}: expected a JSON object")
    return value


def _load_document(data: bytes, what: str) -> dict[str, Any]:
    """A manifest or index: a JSON object with ``schemaVersion`` 2 (:class:`StoreError`)."""
    obj = load_json(data, what)
    if obj.get("schemaVersion") != 2:
        raise StoreError(f"{what}: schemaVersion must be 2")
    return obj


@dataclass(frozen=True, slots=True)
class Platform:
    """The ``platform`` of an index entry."""

    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed pointer to a blob: media type, digest and size (plus optional annotations)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise StoreError(f"{what}: descriptor is not an object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise StoreError(f"{what}: descriptor lacks mediaType or digest")
        if not DIGEST_RE.match(digest):
            raise StoreError(f"{what}: unsupported digest {digest!r} (only sha256)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(f"{what}: descriptor {digest} has an invalid size")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise StoreError(f"{what}: descriptor {digest} has invalid annotations")
        return cls(media_type, Digest(digest), size, annotations, _platform(obj.get("platform")))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out

    @property
    def ref_name(self) -> str | None:
        """The ``org.opencontainers.image.ref.name`` annotation, if any."""
        return self.annotations.get(ANNOTATION_REF_NAME)


def _platform(obj: Any) -> Platform | None:
    if not isinstance(obj, dict):
        return None
    os_name, arch = obj.get("os"), obj.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = obj.get("variant")
    return Platform(os_name, arch, variant if isinstance(variant, str) else None)


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI, or Docker v2 schema 2 before conversion)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "manifest") -> Manifest:
        obj = _load_document(data, what)
        media_type = obj.get("mediaType", OCI_MANIFEST)
        if media_type not in MANIFEST_TYPES:
            raise StoreError(f"{what}: not an image manifest ({media_type})")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise StoreError(f"{what}: layers must be a list")
        config = Descriptor.from_json(obj.get("config"), what)
        descs = tuple(Descriptor.from_json(item, what) for item in layers)
        for desc in descs:
            if desc.media_type not in LAYER_TYPES:
                raise StoreError(f"{what}: unsupported layer media type {desc.media_type}")
        annotations = obj.get("annotations") or {}
        return cls(config, descs, media_type, annotations)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        doc["config"] = self.config.to_json()
        doc["layers"] = [layer.to_json() for layer in self.layers]
        if self.annotations:
            doc["annotations"] = dict(sorted(self.annotations.items()))
        return canonical_json(doc)

    def to_oci(self) -> Manifest:
        """The same manifest with OCI media types (blobs unchanged, so digests stay valid)."""
        config = replace(self.config, media_type=OCI_CONFIG)
        layers = tuple(replace(d, media_type=to_oci_media_type(d.media_type)) for d in self.layers)
        return Manifest(config, layers, OCI_MANIFEST, self.annotations)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index: ``index.json`` of a layout, or a multi-platform manifest list."""

    manifests: tuple[Descriptor, ...] = ()
    media_type: str | None = OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "index") -> Index:
        obj = _load_document(data, what)
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise StoreError(f"{what}: manifests must be a list")
        descs = tuple(Descriptor.from_json(item, what) for item in manifests)
        annotations = obj.get("annotations") or {}
        return cls(descs, obj.get("mediaType"), annotations)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schemaVersion": 2}
        if self.media_type:
            doc["mediaType"] = self.media_type
        doc["manifests"] = [m.to_json() for m in self.manifests]
        if self.annotations:
            doc["annotations"] = dict(sorted(self.annotations.items()))
        return canonical_json(doc)


def config_diff_ids(config: Mapping[str, Any], what: str = "config") -> list[Digest]:
    """``rootfs.diff_ids`` of an image config, validated."""
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise StoreError(f"{what}: rootfs must be of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and DIGEST_RE.match(d) for d in diff_ids
    ):
        raise StoreError(f"{what}: rootfs.diff_ids must be a list of sha256 digests")
    return [Digest(d) for d in diff_ids]
