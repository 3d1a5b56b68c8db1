"""Declarative builders: layer tars and OCI / docker-archive sources made on the fly."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_TYPES = {
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


@dataclass(frozen=True)
class E:
    """One tar entry: a file (``data``), ``dir``, ``symlink`` (``target``), ``whiteout``,
    ``opaque`` (marks the directory ``path`` opaque), ``hardlink`` (``target``) or ``fifo``;
    ``xattrs`` go into PAX ``SCHILY.xattr.*`` records."""

    path: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Image:
    """An image for a source: a name and its layers, bottom-most first."""

    name: str | None
    layers: list[list[E]]
    compression: str = "gzip"
    env: list[str] = field(default_factory=lambda: ["PATH=/bin"])
    settings: dict[str, object] = field(default_factory=dict)  # more of the config's "config"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, e.mtime
            if e.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in e.xattrs
                }
            data = None
            if e.kind == "file":
                info.size, data = len(e.data), io.BytesIO(e.data)
            elif e.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, e.mode if e.mode != 0o644 else 0o755
            elif e.kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.target, 0o777
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif e.kind == "whiteout":
                head, _, name = e.path.rpartition("/")
                info.name = f"{head}/.wh.{name}" if head else f".wh.{name}"
            elif e.kind == "opaque":
                info.name = f"{e.path}/.wh..wh..opq"
            tar.addfile(info, data)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def _config(image: Image, diff_ids: list[str]) -> bytes:
    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": image.env, **image.settings},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "builder"}] * len(diff_ids),
    }
    return json.dumps(config).encode()


def write_oci_layout(dest: Path, images: list[Image], flavour: str = "oci") -> dict[str, str]:
    """Write *images* as an OCI image layout at *dest*; return ``{name: manifest digest}``.

    ``flavour="docker"`` writes Docker v2 schema 2 manifests and media types instead.
    """
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries, out = [], {}
    for image in images:
        tars = [layer_tar(layer) for layer in image.layers]
        diff_ids = [sha(t) for t in tars]
        layer_descs = []
        for t in tars:
            blob = compress(t, image.compression)
            layer_descs.append(
                {
                    "mediaType": LAYER_TYPES[(flavour, image.compression)],
                    "digest": put(blob),
                    "size": len(blob),
                }
            )
        config = _config(image, diff_ids)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if flavour == "oci" else DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json"
                if flavour == "oci"
                else "application/vnd.docker.container.image.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": layer_descs,
        }
        data = json.dumps(manifest).encode()
        entry: dict[str, object] = {
            "mediaType": manifest["mediaType"],
            "digest": put(data),
            "size": len(data),
        }
        if image.name:
            entry["annotations"] = {"org.opencontainers.image.ref.name": image.name}
            out[image.name] = sha(data)
        entries.append(entry)
    index = {"schemaVersion": 2, "manifests": entries}
    (dest / "index.json").write_text(json.dumps(index))
    return out


def write_docker_archive(dest: Path, images: list[Image], *, blob_paths: bool = False) -> None:
    """Write *images* as a ``docker save`` tarball.

    Legacy layout (``<id>/layer.tar``, ``<hex>.json``), or with *blob_paths* the layout of
    newer Docker versions, which name everything ``blobs/sha256/<hex>``.
    """
    manifest = []
    with tarfile.open(dest, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for image in images:
            tars = [layer_tar(layer) for layer in image.layers]
            diff_ids = [sha(t) for t in tars]
            names = []
            for t, diff_id in zip(tars, diff_ids, strict=True):
                name = f"blobs/sha256/{diff_id[7:]}" if blob_paths else f"{diff_id[7:]}/layer.tar"
                if name not in names:
                    add(name, t)
                names.append(name)
            config = _config(image, diff_ids)
            config_name = (
                f"blobs/sha256/{sha(config)[7:]}" if blob_paths else f"{sha(config)[7:]}.json"
            )
            add(config_name, config)
            tags = [image.name] if image.name else []
            manifest.append({"Config": config_name, "RepoTags": tags, "Layers": names})
        add("manifest.json", json.dumps(manifest).encode())


BASE = [
    E("etc", "dir"),
    E("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    E("etc/gone", data=b"deleted later"),
    E("bin", "dir"),
    E("bin/sh", data=b"#!shell", mode=0o755),
    E("bin/ash", "hardlink", target="bin/sh"),
    E("usr", "dir"),
    E("usr/lib", "dir"),
    E("usr/lib/old", data=b"old"),
    E("link", "symlink", target="etc/passwd"),
]
TOP = [
    E("etc", "dir"),
    E("etc/gone", "whiteout"),
    E("etc/motd", data=b"hello\n"),
    E("usr/lib", "dir"),
    E("usr/lib", "opaque"),
    E("usr/lib/new", data=b"new"),
]
