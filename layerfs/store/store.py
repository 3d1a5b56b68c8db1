"""The :class:`Store` facade: images, tags, containers, import/export, commit and gc.

Every method that writes holds the store's write lock (``ROOT/lock``) for its whole duration;
methods that only read take no lock. Blobs and unpacked layers are staged in ``ROOT/tmp`` and
renamed into place complete; ``index.json`` is replaced atomically and only after the blobs
it points to are stored. So a writer killed at any moment leaves the store as it was before the
operation, plus garbage in ``tmp/`` that the next :meth:`Store.open` sweeps away.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

from layerfs import privilege
from layerfs.errors import BadReferenceError, DigestMismatchError, NotFoundError, StoreError
from layerfs.options import Lower
from layerfs.progress import Progress, Task, task
from layerfs.store import archive, bundle, gc
from layerfs.store.blobs import fsync_dir
from layerfs.store.containers import Container, ContainerStore
from layerfs.store.images import (
    Image,
    config_squashed,
    config_with_layer,
    digest_of_name,
    load_image,
    names_by_digest,
    new_manifest,
    with_tag,
    with_untagged,
    without_digest,
    without_tag,
)
from layerfs.store.ingest import Ingest
from layerfs.store.layout import ImageLayout
from layerfs.store.lock import StoreLock
from layerfs.store.mounts import MountRequest, image_view, image_volumes, plan_mounts
from layerfs.store.oci import OCI_CONFIG, Descriptor, canonical_json
from layerfs.store.partial import LazyRecord, LazyStore, RemoteBlobs
from layerfs.store.refs import (
    Reference,
    parse_reference,
    parse_tagged,
    short_id_prefix,
)
from layerfs.store.sources import open_source
from layerfs.store.volumes import VolumeDir, Volumes
from layerfs.tar import (
    ApplyMode,
    ApplyOptions,
    ApplyResult,
    Change,
    Compression,
    CreateOptions,
    apply_layer,
    create_layer,
    diff_changes,
)
from layerfs.types import Digest

ROOT_ENV = "LAYERFS_ROOT"
SYSTEM_ROOT = Path("/var/lib/layerfs")
ZSTD_LEVEL = 3
ExportFormat = Literal["oci", "docker-archive"]


def default_root() -> Path:
    """``$LAYERFS_ROOT``; else ``/var/lib/layerfs`` for root of the host, and
    ``~/.local/share/layerfs`` for anyone else (uid 0 of a user namespace included: it
    cannot write ``/var/lib``).

    ``$XDG_DATA_HOME`` replaces ``~/.local/share`` when set.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    if privilege.is_host_root():
        return SYSTEM_ROOT
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "layerfs"


class MountSpec(NamedTuple):
    """What to stack for an image (read-only: no upper) or a container (read-write): lowers
    top-most first, host directories or partial layers (see :meth:`Store.image_sources`)."""

    lowers: list[Lower]
    upper: Path | None
    work: Path | None


@dataclass(frozen=True, slots=True)
class RemoveResult:
    """What :meth:`Store.remove_image` did: the names removed and what gc freed."""

    untagged: tuple[str, ...]
    removed: tuple[Digest, ...]
    gc: gc.GcResult


class Store:
    """An image store rooted at one directory. Open with :meth:`Store.open`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = ImageLayout(root)
        self.blobs = self.layout.blobs
        self._containers = ContainerStore(self.layout.containers_dir, self.layout.tmp_dir)
        self._lock = StoreLock(self.layout.lock_file)
        volume_dir = VolumeDir(self.layout.volumes_dir, self.layout.tmp_dir)
        self.volumes = Volumes(volume_dir, self._containers.list, self.writing)
        self.lazy = LazyStore(root, self.layout.tmp_dir, self.blobs)
        self.remote: RemoteBlobs | None = None  # completes partial layers (see ensure_blob)

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Store:
        """Open (creating if needed) the store at *root* or :func:`default_root`.

        If no other process is writing, leftovers of an interrupted writer in ``tmp/`` are
        deleted now.
        """
        path = Path(root) if root is not None else default_root()
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path)
        if store.layout.index_file.exists() and store.layout.tmp_dir.is_dir():
            if store._try_lock():
                try:
                    store.layout.ensure()
                    store.layout.sweep_tmp()
                finally:
                    store._lock.release()
        else:
            with store._lock.held():
                store.layout.ensure()
                store.layout.sweep_tmp()
        return store

    def _try_lock(self) -> bool:
        """Take the write lock if it is free; a reader without write access just reads."""
        try:
            return self._lock.try_acquire()
        except PermissionError:
            return False

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock (re-entrant) for a sequence of changes."""
        with self._lock.held():
            yield

    # -- blobs -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def ingest(self) -> Iterator[Ingest]:
        """Hold the write lock while blobs of a new image arrive (see :mod:`~.ingest`).

        The :class:`Ingest` works from any thread until the block ends; record the image with
        :meth:`add_image` inside the block, from the thread that entered it.
        """
        with self.writing():
            ingest = Ingest(self.blobs)
            try:
                yield ingest
            finally:
                ingest.closed = True

    def has_blob(self, digest: str) -> bool:
        """Whether the blob *digest* is in ``blobs/`` (a partial layer's is not)."""
        return self.blobs.exists(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream over the blob *digest* that raises
        :class:`~layerfs.errors.DigestMismatchError` at its end if the bytes on disk do not
        hash to it; :class:`NotFoundError` when it is missing."""
        return self.blobs.open(digest)

    def read_blob(self, digest: str) -> bytes:
        """The whole blob *digest*, verified (for manifests and configs); see :meth:`open_blob`."""
        return self.blobs.get(digest)

    # -- images ----------------------------------------------------------------------------

    def images(self) -> list[Image]:
        """Every image in ``index.json`` (tagged or not), sorted by first name, then id."""
        found = [
            load_image(self.blobs, digest, names)
            for digest, names in names_by_digest(self.layout.read_index()).items()
        ]
        return sorted(found, key=lambda im: (not im.names, im.names[:1], im.digest))

    def resolve(self, ref: str | Reference) -> Image:
        """The image *ref* names: ``name[:tag]``, ``name@sha256:<hex>``, or an id prefix.

        A bare hex string is first tried as ``NAME:latest``, then as a prefix (4 or more hex
        digits, optionally after ``sha256:``) of an image id (manifest digest). Raises
        :class:`NotFoundError`, :class:`BadReferenceError`, or :class:`StoreError` when a
        prefix is ambiguous.
        """
        return self._image(self._resolve_digest(ref))

    def _resolve_digest(self, ref: str | Reference) -> Digest:
        index = self.layout.read_index()
        text = str(ref)
        parsed: Reference | None = ref if isinstance(ref, Reference) else None
        if parsed is None:
            with contextlib.suppress(BadReferenceError):
                parsed = parse_reference(text)
        if parsed is not None and parsed.digest is not None:
            if not self.blobs.exists(parsed.digest):
                raise NotFoundError(f"no such image: {text}")
            return parsed.digest
        if parsed is not None:
            found = digest_of_name(index, parsed.tagged)
            if found is not None:
                return found
        prefix = short_id_prefix(text)
        if prefix is not None:
            matches = sorted({d for d in names_by_digest(index) if d[7:].startswith(prefix)})
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"image id prefix {text!r} is ambiguous")
        if parsed is None and prefix is None:
            raise BadReferenceError(f"invalid image reference {text!r}")
        raise NotFoundError(f"no such image: {text}")

    def _image(self, digest: Digest) -> Image:
        names = names_by_digest(self.layout.read_index()).get(digest, [])
        return load_image(self.blobs, digest, names)

    def inspect(self, ref: str | Reference) -> dict[str, Any]:
        """Id, names, manifest and config of an image, as one JSON-ready dict."""
        image = self.resolve(ref)
        return {
            "Id": image.digest,
            "RepoTags": list(image.names),
            "Manifest": json.loads(self.blobs.get(image.digest)),
            "Config": dict(image.config),
        }

    def tag(self, src: str | Reference, dst: str) -> Image:
        """Point the tag *dst* (``name[:tag]``) at the image *src* names."""
        with self.writing():
            image = self.resolve(src)
            self._set_tag(image.descriptor, parse_tagged(dst).tagged)
            return self._image(image.digest)

    def _set_tag(self, desc: Descriptor, tagged: str) -> None:
        self.layout.write_index(with_tag(self.layout.read_index(), desc, tagged))

    def add_image(self, manifest: Descriptor, name: str | None = None) -> Image:
        """Record a manifest whose blobs are already stored: tagged *name*, or untagged.

        For callers that fill the blob store themselves (a registry pull): the manifest and
        its config are read back and checked (:func:`load_image`) and each layer must be
        present, or recorded as a partial layer (a lazy pull), before ``index.json``
        changes, so the index never points at half an image. Partial-layer records of layers
        that are now present are dropped.
        """
        with self.writing():
            image = load_image(self.blobs, manifest.digest)
            for layer in image.layers:
                if self.blobs.exists(layer.digest):
                    if self.lazy.record(layer.digest) is not None:
                        self.lazy.forget(layer.digest)
                elif self.lazy.record(layer.digest) is None:
                    raise NotFoundError(f"image {manifest.digest}: layer {layer.digest} missing")
            if name is not None:
                self._set_tag(manifest, parse_tagged(name).tagged)
            else:
                self.layout.write_index(with_untagged(self.layout.read_index(), manifest))
            return self._image(manifest.digest)

    def remove_image(self, ref: str | Reference) -> RemoveResult:
        """Remove a tag (``name:tag``) or, by digest or id, every tag of an image; then gc.

        Blobs and unpacked layers still used by another tag or by a container are kept.
        """
        with self.writing():
            digest = self._resolve_digest(ref)
            index = self.layout.read_index()
            parsed = _try_parse(str(ref)) if not isinstance(ref, Reference) else ref
            by_name = parsed is not None and parsed.digest is None
            if by_name and parsed is not None and digest_of_name(index, parsed.tagged) == digest:
                untagged: tuple[str, ...] = (parsed.tagged,)
                self.layout.write_index(without_tag(index, parsed.tagged))
            else:
                untagged = tuple(names_by_digest(index).get(digest, []))
                self.layout.write_index(without_digest(index, digest))
            still = digest in names_by_digest(self.layout.read_index())
            return RemoveResult(untagged, () if still else (digest,), self.gc())

    def gc(self) -> gc.GcResult:
        """Delete blobs, unpacked layers and partial layers no image and no container uses."""
        with self.writing():
            return gc.collect(self.layout, self._containers.list(), self.lazy)

    # -- partial layers (lazy pull) --------------------------------------------------------

    def local_bytes(self, image: Image) -> int:
        """How many bytes of the image's config and layer blobs are in the store."""
        total = image.manifest.config.size
        for layer in image.layers:
            if self.blobs.exists(layer.digest):
                total += layer.size
            elif self.lazy.record(layer.digest) is not None:
                total += self.lazy.partial(layer).present_bytes()
        return total

    def ensure_blob(self, desc: Descriptor) -> None:
        """Make the layer blob *desc* local, completing a partial layer through :attr:`remote`.

        The fetching runs without the store lock (a mount may fetch at the same time: both
        write the same bytes); the verified blob then moves into ``blobs/`` under the lock.
        Does nothing for a blob the store has no partial-layer record of (reading it then
        reports what is wrong). Raises :class:`StoreError` when it is partial and no remote is
        attached, and whatever the remote raises (:class:`RegistryError`,
        :class:`DigestMismatchError`).
        """
        if self.blobs.exists(desc.digest):
            return
        record = self.lazy.record(desc.digest)
        if record is None:
            return  # not a partial layer: whoever reads the blob reports it missing
        if self.remote is None:
            raise StoreError(
                f"layer {desc.digest} was pulled lazily and is not complete; "
                f"`layerfs pull {record.source}` completes it"
            )
        self.remote.complete(self.lazy, record)
        self.finish_partial(record)

    def finish_partial(self, record: LazyRecord) -> None:
        """Move the partial layer of *record*, every byte of it fetched, into ``blobs/`` and
        forget the record (a blob already there is kept as it is).

        Raises :class:`StoreError` when bytes are missing, and :class:`DigestMismatchError`
        when they do not hash to the layer's digest: the fetched bytes are dropped and the
        record kept, so the next completion fetches them again.
        """
        digest = record.descriptor.digest
        with self.writing():
            if not self.blobs.exists(digest):
                self.lazy.partial(record.descriptor).finish(self.blobs)
            self.lazy.forget(digest)

    def ensure_image(self, image: Image) -> None:
        """Make every layer blob of *image* local (see :meth:`ensure_blob`)."""
        for layer in image.layers:
            self.ensure_blob(layer)

    # -- layers ----------------------------------------------------------------------------

    def layer_dirs(self, image: Image, progress: Progress | None = None) -> list[Path]:
        """The image's unpacked layer directories, **top-most first**, unpacking missing ones.

        Each layer is unpacked once per store (``layers/<diff_id hex>``) and shared.
        """
        dirs = [
            self.layer_dir(desc, diff_id, progress)
            for desc, diff_id in zip(image.layers, image.diff_ids, strict=True)
        ]
        return dirs[::-1]

    def image_sources(self, image: Image, progress: Progress | None = None) -> list[Lower]:
        """The image's lower layers for a stack, **top-most first**, without downloading it.

        A partial layer with a TOC is named by the attached :attr:`remote`'s layer source
        (read through its TOC, content fetched as it is read); every other layer is its
        unpacked directory, unpacked now where missing (a partial layer without a TOC is
        fetched whole first: :meth:`ensure_blob`). Without a remote, partial layers are
        completed as :meth:`layer_dirs` does, which then fails.
        """
        sources: list[Lower] = []
        for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
            target = self.layout.layer_dir(diff_id)
            remote = self.remote
            record = None
            if remote is not None and not target.is_dir() and not self.blobs.exists(desc.digest):
                record = self.lazy.record(desc.digest)
            if remote is not None and record is not None and record.toc_format is not None:
                sources.append(remote.layer_source(self.lazy, record, target))
            else:
                sources.append(self.layer_dir(desc, diff_id, progress))
        return sources[::-1]

    def layer_dir(
        self, desc: Descriptor, diff_id: Digest, progress: Progress | None = None
    ) -> Path:
        """The unpacked directory of one layer (blob *desc*, tar *diff_id*), unpacking it
        (and completing a partial layer, see :meth:`ensure_blob`) where missing."""
        target = self.layout.layer_dir(diff_id)
        if target.is_dir():
            return target
        self.ensure_blob(desc)
        with self.writing():
            if target.is_dir():  # another process unpacked it while we waited for the lock
                return target
            unpacking = task(progress, f"unpacking {diff_id[7:19]}", desc.size)
            with self._staging("layer-") as staging, unpacking as report:
                result = apply_layer(
                    self.blobs.path(desc.digest),
                    staging / "layer",
                    options=ApplyOptions(
                        mode=ApplyMode.LAYER, upper_format=privilege.layer_format()
                    ),
                    progress=report,
                )
                _check_applied(desc, diff_id, result)
                os.rename(staging / "layer", target)
                fsync_dir(self.layout.layers_dir)
            return target

    @contextlib.contextmanager
    def _staging(self, prefix: str) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.layout.tmp_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def unpack(
        self, ref: str | Reference, dest: str | os.PathLike[str], progress: Progress | None = None
    ) -> Image:
        """Write the image's flattened root filesystem into *dest* (created if missing).

        Layers are applied bottom-up in ROOTFS mode: whiteouts delete, as ``umoci raw unpack``.
        """
        image = self.resolve(ref)
        target = Path(dest)
        target.mkdir(parents=True, exist_ok=True)
        self.ensure_image(image)
        for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
            with task(progress, f"applying {diff_id[7:19]}", desc.size) as report:
                result = apply_layer(
                    self.blobs.path(desc.digest),
                    target,
                    options=ApplyOptions(mode=ApplyMode.ROOTFS),
                    progress=report,
                )
            _check_applied(desc, diff_id, result)
        return image

    # -- import / export -------------------------------------------------------------------

    def import_path(
        self,
        path: str | os.PathLike[str],
        ref: str | None = None,
        progress: Progress | None = None,
        *,
        ref_name: str | None = None,
    ) -> list[Image]:
        """Import an OCI image layout (directory or tarball) or a ``docker save`` tarball.

        The format is detected. *ref_name* picks the images the source calls so (an OCI
        ``ref.name`` or containerd name, a docker ``RepoTags`` entry). With *ref* the (single)
        imported image is tagged *ref*; otherwise it gets the name the source gives it, if the
        source gives one: a bare layout tag such as ``v1`` names no repository, and such an
        image is imported untagged (see ``docs/images.md``).
        """
        source_path = Path(path)
        with self.writing():
            new_tag = parse_tagged(ref).tagged if ref is not None else None
            importing = task(progress, f"importing {source_path.name}", None)
            with open_source(source_path, self.layout.tmp_dir) as source, importing as report:
                imported = archive.import_source(self.blobs, source, report, ref_name)
            if new_tag is not None and len(imported) != 1:
                raise StoreError(
                    f"{source_path}: holds {len(imported)} images; a name needs one"
                    " (pick it with PATH:REFNAME)"
                )
            index = self.layout.read_index()
            for item in imported:
                names = (new_tag,) if new_tag is not None else item.names
                for name in names:
                    index = with_tag(index, item.descriptor, name)
                if not names:
                    index = with_untagged(index, item.descriptor)
            self.layout.write_index(index)
            return [self._image(item.descriptor.digest) for item in imported]

    def export(
        self,
        ref: str | Reference,
        dest: str | os.PathLike[str],
        format: ExportFormat = "oci",
        progress: Progress | None = None,
    ) -> Image:
        """Export an image to an OCI image layout directory or a docker-archive tarball.

        The image keeps the tag *ref* names (or all its tags when *ref* is a digest or id).
        """
        image = self.resolve(ref)
        parsed = _try_parse(str(ref))
        names = (
            [parsed.tagged]
            if parsed and parsed.digest is None and parsed.tagged in image.names
            else list(image.names)
        )
        target = Path(dest)
        self.ensure_image(image)
        with task(progress, f"exporting {image.short_id}", image.size):
            if format == "oci":
                archive.export_oci(self.blobs, image, names, target)
            elif format == "docker-archive":
                with self.writing():
                    archive.export_docker_archive(
                        self.blobs, image, names, target, self.layout.tmp_dir
                    )
            else:
                raise StoreError(f"unknown export format {format!r}")
        return image

    # -- new images ------------------------------------------------------------------------

    def _store_image(
        self, base: Image, config: dict[str, Any], layers: Sequence[Descriptor]
    ) -> Descriptor:
        config_info = self.blobs.put_bytes(canonical_json(config))
        config_desc = Descriptor(OCI_CONFIG, config_info.digest, config_info.size)
        manifest = new_manifest(base.manifest, config_desc, layers)
        info = self.blobs.put_bytes(manifest.to_bytes())
        return Descriptor(manifest.media_type, info.digest, info.size)

    def _write_layer(
        self,
        upper: Path,
        lowers: Sequence[Path],
        options: CreateOptions,
        progress: Task,
    ) -> tuple[Descriptor, Digest]:
        fd, name = tempfile.mkstemp(prefix="new-layer-", dir=self.layout.tmp_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                created = create_layer(
                    upper,
                    out,
                    lowers=tuple(lowers),
                    options=options,
                    progress=progress,
                )
                out.flush()
                os.fsync(out.fileno())
            info = self.blobs.adopt(path, created.digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return Descriptor(created.media_type, info.digest, info.size), created.diff_id

    def commit(
        self,
        container: str | Container,
        new_ref: str,
        *,
        compression: Compression = Compression.ZSTD,
        message: str | None = None,
        progress: Progress | None = None,
    ) -> Image:
        """A new image: the container's image plus one layer made from its upper, tagged *new_ref*.

        The config gets the layer's diff_id appended to ``rootfs.diff_ids`` and a history
        entry (``comment`` = *message*). The container's mount paths are left out of the
        layer. Commit a container that is not being written to.
        """
        with self.writing():
            box = container if isinstance(container, Container) else self.container(container)
            tagged = parse_tagged(new_ref).tagged
            base = self._image(box.image)
            lowers = self.layer_dirs(base, progress)
            options = CreateOptions(
                compression=compression,
                level=ZSTD_LEVEL,
                exclude=frozenset(m.path for m in box.mounts),
            )
            with task(progress, f"committing {box.name}", None) as report:
                layer, diff_id = self._write_layer(box.upper, lowers, options, report)
            config = config_with_layer(
                base.config, diff_id, created_by=f"layerfs commit {box.name}", comment=message
            )
            desc = self._store_image(base, config, [*base.layers, layer])
            self._set_tag(desc, tagged)
            return self._image(desc.digest)

    def squash(
        self,
        ref: str | Reference,
        new_ref: str,
        *,
        compression: Compression = Compression.ZSTD,
        progress: Progress | None = None,
    ) -> Image:
        """A new single-layer image with the flattened content of *ref*, tagged *new_ref*."""
        with self.writing():
            tagged = parse_tagged(new_ref).tagged
            with self._staging("squash-") as staging:
                base = self.unpack(ref, staging / "rootfs", progress)
                options = CreateOptions(compression=compression, level=ZSTD_LEVEL)
                with task(progress, f"squashing {base.short_id}", None) as report:
                    layer, diff_id = self._write_layer(staging / "rootfs", (), options, report)
            config = config_squashed(base.config, diff_id, created_by=f"layerfs squash {ref}")
            desc = self._store_image(base, config, [layer])
            self._set_tag(desc, tagged)
            return self._image(desc.digest)

    # -- containers ------------------------------------------------------------------------

    def containers(self) -> list[Container]:
        """Every container, oldest first."""
        return self._containers.list()

    def container(self, name_or_id: str) -> Container:
        """A container by name, id or unique id prefix."""
        return self._containers.get(name_or_id)

    def create_container(
        self,
        image_ref: str | Reference,
        name: str | None = None,
        progress: Progress | None = None,
        *,
        volumes: Sequence[str | MountRequest] = (),
    ) -> Container:
        """A new container over the image: empty upper and workdir, its layers unpacked.

        *volumes* are ``-v`` specs or :class:`MountRequest` objects; the image config's
        ``Volumes`` add anonymous volumes (:func:`~layerfs.store.mounts.plan_mounts`). Named
        volumes are created on first use, and an empty volume no container uses yet starts as
        a copy of the image's content at its path. Bad input raises before anything is made.
        """
        requests = [MountRequest.parse(v) if isinstance(v, str) else v for v in volumes]
        with self.writing():
            if name is not None:
                self._containers.check_name(name)
            image = self.resolve(image_ref)
            lowers = self.image_sources(image, progress)
            with image_view(lowers) as view:
                mounts = plan_mounts(view, requests, image_volumes(image.config))
                created = self.volumes.attach(mounts, view, progress)
            try:
                return self._containers.create(
                    image.digest, _display_name(image, image_ref), image.diff_ids, name, mounts
                )
            except BaseException:
                self.volumes.discard(created)
                raise

    def remove_container(self, name_or_id: str, *, volumes: bool = False) -> Container:
        """Delete a container's upper, workdir and record; then gc what only it kept.

        Its volumes are kept, unless *volumes*: then its anonymous volumes that no other
        container uses are deleted too (``rm -v``).
        """
        with self.writing():
            box = self.container(name_or_id)
            self._containers.remove(box)
            if volumes:
                self.volumes.release(box)
            self.gc()
            return box

    def diff(self, container: str | Container) -> list[Change]:
        """What the container changed relative to its image (added, changed, deleted paths).

        Paths at or below the container's mounts are left out: writes there reach the volume
        or the host, not the container's upper.
        """
        box = container if isinstance(container, Container) else self.container(container)
        lowers = self.layer_dirs(self._image(box.image))
        changes = diff_changes(box.upper, lowers)
        return [c for c in changes if not any(m.covers(c.path) for m in box.mounts)]

    def runtime_config(
        self, container: str | Container, command: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """An OCI runtime ``config.json`` for the container (see :mod:`layerfs.store.bundle`).

        Its volumes and bind mounts are bind mounts of the config, parents before children.
        """
        box = container if isinstance(container, Container) else self.container(container)
        image = self._image(box.image)
        binds = [(m.path, self.volumes.source(m), m.readonly) for m in box.mounts]
        return bundle.runtime_config(image.config, command=command, hostname=box.name, binds=binds)

    def mount_spec(self, name: str) -> MountSpec:
        """Lowers/upper/work for a container (by name or id) or, failing that, an image ref;
        the lowers are :meth:`image_sources` (partial layers stay partial with a remote)."""
        return MountSpec(self.image_sources(self.mount_image(name)), *self._upper_of(name))

    def mount_image(self, name: str) -> Image:
        """The image a container (by name or id) is made from or, failing that, *name*'s."""
        with contextlib.suppress(NotFoundError):
            return self._image(self.container(name).image)
        return self.resolve(name)

    def _upper_of(self, name: str) -> tuple[Path | None, Path | None]:
        with contextlib.suppress(NotFoundError):
            box = self.container(name)
            return box.upper, box.work
        return None, None


def _display_name(image: Image, ref: str | Reference) -> str | None:
    """The tag a container shows for its image: the one asked for, else the image's first."""
    parsed = ref if isinstance(ref, Reference) else _try_parse(ref)
    if parsed is not None and parsed.tag is not None and parsed.tagged in image.names:
        return parsed.tagged
    return image.names[0] if image.names else None


def _try_parse(text: str) -> Reference | None:
    try:
        return parse_reference(text)
    except BadReferenceError:
        return None


def _check_applied(desc: Descriptor, diff_id: Digest, result: ApplyResult) -> None:
    """The blob must still hash to its name and its tar to the config's ``diff_id``."""
    if result.digest != desc.digest:
        raise DigestMismatchError(f"blob {desc.digest} hashes to {result.digest} on disk")
    if result.diff_id != diff_id:
        raise DigestMismatchError(
            f"layer {desc.digest} unpacks to {result.diff_id}, config says {diff_id}"
        )
