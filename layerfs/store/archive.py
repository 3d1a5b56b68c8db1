"""Import and export: OCI image layouts and ``docker save`` (docker-archive) tarballs.

Import copies every blob into the store through :meth:`BlobStore.put`, so each one is
verified against its digest and size while it streams in and appears only complete. Docker v2
schema 2 manifests are rewritten with OCI media types (configs and layers are byte-for-byte
the same, so their digests stay valid; the manifest gets a new digest). A multi-platform
index contributes the manifest for this machine's platform. The caller (the store facade)
tags the returned manifests in ``index.json`` only after all their blobs are in.

Names: an image is named by what its source says is a *name*, never by a bare tag. In an OCI
layout that is containerd's ``io.containerd.image.name``, or an
``org.opencontainers.image.ref.name`` of the form ``NAME:TAG`` (skopeo's
``oci:DIR:alpine:3.19``, layerfs's own exports); a ref.name without a tag (``v1``, as umoci and
skopeo write for ``DIR:v1``) is a tag within the layout and names no repository. A
docker-archive's ``RepoTags`` are full names. The caller picks images by these source names
(``ref_name``) and may give the name itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from layerfs.errors import (
    BadReferenceError,
    DigestMismatchError,
    LayerFormatError,
    NotFoundError,
    StoreError,
)
from layerfs.progress import Task
from layerfs.store.blobs import BlobStore, atomic_file, digest_bytes
from layerfs.store.images import Image, with_tag, with_untagged
from layerfs.store.layout import INDEX_FILE, OCI_LAYOUT_FILE, check_layout_marker
from layerfs.store.oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    config_diff_ids,
    load_json,
)
from layerfs.store.refs import has_tag, parse_reference
from layerfs.store.sources import Source
from layerfs.tar import MEDIA_TYPES, Compression, detect_compression, open_decompressed
from layerfs.types import Digest

log = logging.getLogger(__name__)

DOCKER_MANIFEST_FILE = "manifest.json"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


@dataclass(frozen=True, slots=True)
class Imported:
    """A manifest now in the store, the ``name:tag`` names its source gave it, and the names
    the source knows it by (ref.name, containerd name or ``RepoTags``, as written there)."""

    descriptor: Descriptor
    names: tuple[str, ...]
    source_names: tuple[str, ...] = ()


def source_format(source: Source) -> str:
    """``"oci"`` or ``"docker-archive"``, by the files the source holds."""
    if source.exists(DOCKER_MANIFEST_FILE):
        return "docker-archive"
    if source.exists(OCI_LAYOUT_FILE) and source.exists(INDEX_FILE):
        return "oci"
    raise StoreError(
        "neither an OCI image layout nor a docker-archive (no index.json/manifest.json)"
    )


def import_source(
    blobs: BlobStore, source: Source, progress: Task | None, ref_name: str | None = None
) -> list[Imported]:
    """Copy the images of *source* into *blobs*: all, or those the source calls *ref_name*.

    *ref_name* is matched against an OCI layout's ``org.opencontainers.image.ref.name`` and
    ``io.containerd.image.name`` annotations, or a docker-archive's ``RepoTags``;
    ``NotFoundError`` when nothing matches. See the module docstring for the names.
    """
    if source_format(source) == "docker-archive":
        return _import_docker(blobs, source, progress, ref_name)
    return _import_oci(blobs, source, progress, ref_name)


def _matches(source_names: tuple[str, ...], ref_name: str | None) -> bool:
    """Whether *ref_name* picks an image the source calls *source_names*: the same text, or
    the same reference up to the default tag and Docker Hub's ``docker.io/[library/]``
    prefix (skopeo and buildah write ``docker.io/app:1`` into a docker-archive)."""
    if ref_name is None or ref_name in source_names:
        return True
    wanted = _hub_short(_as_reference(ref_name))
    return wanted is not None and wanted in (_hub_short(_as_reference(n)) for n in source_names)


def _as_reference(text: str) -> str | None:
    try:
        return parse_reference(text).tagged
    except BadReferenceError:
        return None


def _hub_short(name: str | None) -> str | None:
    for prefix in ("docker.io/", "library/"):
        if name is not None and name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _none_matched(ref_name: str | None, known: list[str]) -> NotFoundError:
    listed = ", ".join(repr(n) for n in known) or "none"
    return NotFoundError(f"no image named {ref_name!r} in the source (it has: {listed})")


# -- OCI image layout --------------------------------------------------------------------------


def _import_oci(
    blobs: BlobStore, source: Source, progress: Task | None, ref_name: str | None
) -> list[Imported]:
    marker = load_json(source.read(OCI_LAYOUT_FILE), OCI_LAYOUT_FILE)
    if not str(marker.get("imageLayoutVersion", "")).startswith("1."):
        raise StoreError(f"unsupported image layout version {marker.get('imageLayoutVersion')!r}")
    index = Index.from_bytes(source.read(INDEX_FILE), INDEX_FILE)
    entries = [e for e in index.manifests if _matches(_source_names(e), ref_name)]
    if not entries:
        raise _none_matched(ref_name, [n for e in index.manifests for n in _source_names(e)])
    imported = []
    for entry in entries:
        manifest_desc = _select_manifest(source, entry)
        stored = _copy_image(blobs, source, manifest_desc, progress)
        imported.append(Imported(stored, _names_of(entry), _source_names(entry)))
    return imported


def _blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _read_verified(source: Source, desc: Descriptor) -> bytes:
    data = source.read(_blob_path(desc.digest))
    if digest_bytes(data) != desc.digest or len(data) != desc.size:
        raise DigestMismatchError(f"blob {desc.digest} of the import source does not match")
    return data


def host_platform() -> tuple[str, str]:
    """(os, architecture) in OCI spelling for this machine."""
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


def _select_manifest(source: Source, entry: Descriptor) -> Descriptor:
    """The image manifest an index entry stands for (for an index: this platform's)."""
    if entry.media_type in MANIFEST_TYPES:
        return entry
    if entry.media_type not in INDEX_TYPES:
        raise StoreError(f"index entry {entry.digest}: unsupported media type {entry.media_type}")
    nested = Index.from_bytes(_read_verified(source, entry), f"index {entry.digest}")
    images = [d for d in nested.manifests if d.media_type in MANIFEST_TYPES]
    os_name, arch = host_platform()
    for desc in images:
        if desc.platform and (desc.platform.os, desc.platform.architecture) == (os_name, arch):
            return desc
    if len(images) == 1:
        return images[0]
    raise StoreError(f"index {entry.digest} has no manifest for {os_name}/{arch}")


def _copy_image(
    blobs: BlobStore, source: Source, desc: Descriptor, progress: Task | None
) -> Descriptor:
    data = _read_verified(source, desc)
    manifest = Manifest.from_bytes(data, f"manifest {desc.digest}")
    config_bytes = _read_verified(source, manifest.config)
    config = load_json(config_bytes, f"config {manifest.config.digest}")
    if len(config_diff_ids(config)) != len(manifest.layers):
        raise StoreError(f"manifest {desc.digest}: layer count differs from rootfs.diff_ids")
    for layer in manifest.layers:
        with source.open(_blob_path(layer.digest)) as stream:
            blobs.put(stream, layer.digest, layer.size, progress)
    blobs.put_bytes(config_bytes, manifest.config.digest)
    if manifest.media_type == DOCKER_MANIFEST:
        converted = manifest.to_oci().to_bytes()
        info = blobs.put_bytes(converted)
        return Descriptor(manifest.to_oci().media_type, info.digest, info.size)
    blobs.put_bytes(data, desc.digest)
    return Descriptor(manifest.media_type, desc.digest, desc.size)


def _source_names(entry: Descriptor) -> tuple[str, ...]:
    """What an OCI index entry calls its image: ref.name and containerd's name, if set."""
    names = (entry.annotations.get(k) for k in (ANNOTATION_REF_NAME, ANNOTATION_CONTAINERD_NAME))
    return tuple(n for n in names if n)


def _names_of(entry: Descriptor) -> tuple[str, ...]:
    """The name an index entry gives its image, if it gives one (see the module docstring)."""
    containerd = entry.annotations.get(ANNOTATION_CONTAINERD_NAME)
    ref_name = entry.annotations.get(ANNOTATION_REF_NAME)
    for value in (containerd, ref_name if ref_name and has_tag(ref_name) else None):
        if value:
            name = _as_reference(value)
            if name is not None:
                return (name,)
            log.warning("import: ignoring unusable image name %r", value)
    return ()


# -- docker-archive ----------------------------------------------------------------------------


def _import_docker(
    blobs: BlobStore, source: Source, progress: Task | None, ref_name: str | None
) -> list[Imported]:
    try:
        entries = json.loads(source.read(DOCKER_MANIFEST_FILE))
    except ValueError as exc:
        raise StoreError(f"{DOCKER_MANIFEST_FILE}: invalid JSON") from exc
    if not isinstance(entries, list):
        raise StoreError(f"{DOCKER_MANIFEST_FILE}: expected a list")
    chosen = [e for e in entries if _matches(_repo_tags(e), ref_name)]
    if not chosen:
        raise _none_matched(ref_name, [n for e in entries for n in _repo_tags(e)])
    return [_import_docker_image(blobs, source, entry, progress) for entry in chosen]


def _repo_tags(entry: Any) -> tuple[str, ...]:
    tags = entry.get("RepoTags") if isinstance(entry, dict) else None
    return tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()


def _import_docker_image(
    blobs: BlobStore, source: Source, entry: Any, progress: Task | None
) -> Imported:
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise StoreError(f"{DOCKER_MANIFEST_FILE}: entry without Config")
    layer_paths = entry.get("Layers") or []
    config_bytes = source.read(entry["Config"])
    _check_named_digest(entry["Config"], config_bytes)
    config = load_json(config_bytes, entry["Config"])
    diff_ids = config_diff_ids(config)
    if len(diff_ids) != len(layer_paths):
        raise StoreError(f"{entry['Config']}: {len(layer_paths)} layers, {len(diff_ids)} diff_ids")
    layers = [
        _import_docker_layer(blobs, source, path, diff_id, progress)
        for path, diff_id in zip(layer_paths, diff_ids, strict=True)
    ]
    config_info = blobs.put_bytes(config_bytes)
    config_desc = Descriptor(OCI_CONFIG, config_info.digest, config_info.size)
    info = blobs.put_bytes(Manifest(config_desc, tuple(layers)).to_bytes())
    names = tuple(parse_reference(tag).tagged for tag in _repo_tags(entry))
    return Imported(Descriptor(OCI_MANIFEST, info.digest, info.size), names, _repo_tags(entry))


def _check_named_digest(path: str, data: bytes) -> None:
    """Docker names configs ``<hex>.json`` or ``blobs/sha256/<hex>``: check the hash if so."""
    stem = path.rsplit("/", 1)[-1].removesuffix(".json")
    if len(stem) == 64 and digest_bytes(data) != f"sha256:{stem}":
        raise DigestMismatchError(f"{path}: content does not hash to its name")


def _import_docker_layer(
    blobs: BlobStore, source: Source, path: str, diff_id: Digest, progress: Task | None
) -> Descriptor:
    with source.open(path) as stream:
        kind = detect_compression(stream.read(8))
    with source.open(path) as stream:
        info = blobs.put(stream, progress=progress)
    if kind is Compression.NONE and info.digest != diff_id:
        raise DigestMismatchError(f"{path}: layer hashes to {info.digest}, config says {diff_id}")
    return Descriptor(MEDIA_TYPES[kind], info.digest, info.size)


# -- export ------------------------------------------------------------------------------------


def export_oci(blobs: BlobStore, image: Image, names: Sequence[str], dest: Path) -> None:
    """Add *image* to the OCI image layout *dest* (created if missing), tagged *names*."""
    _ensure_layout(dest)
    dest_blobs = dest / "blobs" / "sha256"
    for desc in (image.descriptor, image.manifest.config, *image.layers):
        target = dest_blobs / desc.digest.split(":", 1)[1]
        if target.exists():
            continue
        with blobs.open(desc.digest) as src, atomic_file(target, dest) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    index_path = dest / INDEX_FILE
    index = Index.from_bytes(index_path.read_bytes(), str(index_path))
    for name in names:
        index = with_tag(index, image.descriptor, name)
    if not names:
        index = with_untagged(index, image.descriptor)
    with atomic_file(index_path, dest) as out:
        out.write(index.to_bytes())


def _ensure_layout(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"{dest}: exists and is not a directory")
    if dest.exists() and any(dest.iterdir()):
        check_layout_marker(dest)
        return
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    marker = json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode()
    with atomic_file(dest / OCI_LAYOUT_FILE, dest) as out:
        out.write(marker)
    with atomic_file(dest / INDEX_FILE, dest) as out:
        out.write(Index().to_bytes())


def export_docker_archive(
    blobs: BlobStore, image: Image, names: Sequence[str], dest: Path, tmp_dir: Path
) -> None:
    """Write *image* as a ``docker load``-able tarball: manifest.json, config, layer tars.

    Layers are stored uncompressed (``<diff_id hex>/layer.tar``), as ``docker save`` does; each
    is decompressed to ``tmp/`` first (a tar header needs the size) and checked against its
    ``diff_id``.
    """
    config_name = f"{image.manifest.config.digest.split(':', 1)[1]}.json"
    layer_names = [f"{d.split(':', 1)[1]}/layer.tar" for d in image.diff_ids]
    manifest = [{"Config": config_name, "RepoTags": list(names), "Layers": layer_names}]
    with (
        atomic_file(dest, dest.parent) as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_bytes(tar, config_name, blobs.get(image.manifest.config.digest))
        written: set[str] = set()
        for desc, diff_id, name in zip(image.layers, image.diff_ids, layer_names, strict=True):
            if name in written:
                continue
            written.add(name)
            _add_dir(tar, name.split("/", 1)[0])
            with _uncompressed_layer(blobs, desc, diff_id, tmp_dir) as (handle, size):
                tar.addfile(_info(name, size), handle)
        _add_bytes(tar, DOCKER_MANIFEST_FILE, json.dumps(manifest, separators=(",", ":")).encode())


@contextlib.contextmanager
def _uncompressed_layer(
    blobs: BlobStore, desc: Descriptor, diff_id: Digest, tmp_dir: Path
) -> Iterator[tuple[BinaryIO, int]]:
    with tempfile.TemporaryFile(dir=tmp_dir) as plain:
        hasher = hashlib.sha256()
        size = 0
        with blobs.open(desc.digest) as blob:
            stream = open_decompressed(blob)
            while chunk := stream.read(1 << 20):
                hasher.update(chunk)
                plain.write(chunk)
                size += len(chunk)
        if f"sha256:{hasher.hexdigest()}" != diff_id:
            raise LayerFormatError(f"layer {desc.digest} does not match diff_id {diff_id}")
        plain.seek(0)
        yield plain, size


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 0
    tar.addfile(info)
