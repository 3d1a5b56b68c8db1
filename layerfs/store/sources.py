"""Read-only views of an import source: a directory or a tar archive, addressed by path.

An OCI image layout and a ``docker save`` archive are both just named files; reading them
through one small interface lets the importers work the same on a directory, an
``oci-archive`` tarball and a ``docker-archive`` tarball (compressed ones are decompressed
into the store's ``tmp/`` first, because a tar needs random access).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from layerfs.errors import LayerFormatError, NotFoundError, StoreError
from layerfs.tar import Compression, StrictTarInfo, detect_compression, open_decompressed

HEAD_SIZE = 8  # bytes read to recognise a compressed archive


class Source(Protocol):
    """Files of an import source by relative ``/``-separated path."""

    def exists(self, path: str) -> bool: ...

    def open(self, path: str) -> BinaryIO: ...

    def read(self, path: str) -> bytes: ...


def _clean(path: str) -> str:
    norm = posixpath.normpath(path.lstrip("/"))
    if norm == ".." or norm.startswith("../"):
        raise StoreError(f"import source path {path!r} escapes the source")
    return norm


class DirSource:
    """A directory on the host (an unpacked OCI layout or docker-archive)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, path: str) -> bool:
        return (self.root / _clean(path)).is_file()

    def open(self, path: str) -> BinaryIO:
        try:
            return (self.root / _clean(path)).open("rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"{self.root}: no {path}") from exc

    def read(self, path: str) -> bytes:
        with self.open(path) as handle:
            return handle.read()


class TarSource:
    """A seekable, uncompressed tar file; members may be links (``docker save`` uses them)."""

    def __init__(self, handle: BinaryIO, name: str) -> None:
        try:
            self._tar = tarfile.open(  # noqa: SIM115 (lives with self)
                fileobj=handle, mode="r:", tarinfo=StrictTarInfo
            )
        except tarfile.TarError as exc:
            raise LayerFormatError(f"{name}: not a tar archive ({exc})") from exc
        self._name = name
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in self._tar.getmembers():
            self._members[_clean(member.name)] = member

    def exists(self, path: str) -> bool:
        member = self._members.get(_clean(path))
        return member is not None and not member.isdir()

    def open(self, path: str) -> BinaryIO:
        member = self._members.get(_clean(path))
        if member is None:
            raise NotFoundError(f"{self._name}: no member {path}")
        try:
            stream = self._tar.extractfile(member)
        except (tarfile.TarError, KeyError) as exc:
            raise LayerFormatError(f"{self._name}: cannot read {path} ({exc})") from exc
        if stream is None:
            raise LayerFormatError(f"{self._name}: member {path} is not a file")
        return cast(BinaryIO, stream)

    def read(self, path: str) -> bytes:
        with self.open(path) as handle:
            return handle.read()


def split_source(text: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:REFNAME`` (like skopeo's ``oci:DIR:REFNAME``): the path and the name.

    *text* is a path as a whole when something exists there. Otherwise it is split at the
    first ``:`` whose left part exists, so a path holding a ``:`` still works and REFNAME may
    hold colons (``layout:alpine:3.19``). ``NotFoundError`` when no such split exists.
    """
    if os.path.lexists(text):
        return Path(text), None
    at = text.find(":")
    while at > 0:
        if os.path.lexists(text[:at]) and at + 1 < len(text):
            return Path(text[:at]), text[at + 1 :]
        at = text.find(":", at + 1)
    raise NotFoundError(
        f"{text}: no such file or directory (nor PATH:REFNAME with an existing PATH)"
    )


@contextlib.contextmanager
def open_source(path: Path, tmp_dir: Path) -> Iterator[Source]:
    """A :class:`Source` for a directory or a (possibly gzip/zstd-compressed) tar file."""
    if path.is_dir():
        yield DirSource(path)
        return
    with path.open("rb") as handle:
        kind = detect_compression(handle.read(HEAD_SIZE))
        handle.seek(0)
        if kind is Compression.NONE:
            yield TarSource(handle, str(path))
            return
        with _decompressed_copy(handle, tmp_dir) as plain:
            yield TarSource(plain, str(path))


@contextlib.contextmanager
def _decompressed_copy(handle: BinaryIO, tmp_dir: Path) -> Iterator[BinaryIO]:
    fd, name = tempfile.mkstemp(prefix="archive-", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w+b") as plain:
            shutil.copyfileobj(open_decompressed(handle), plain, 1 << 20)
            plain.seek(0)
            yield plain
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
