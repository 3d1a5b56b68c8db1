"""Unpacking OCI layer tars: as a new overlayfs lower layer, or onto an existing root.

Two modes (see :class:`ApplyMode`). Both stream the blob once through the decompressor and
``tarfile``'s stream mode, hashing the blob (``digest``) and the tar (``diff_id``) on the way
and enforcing the byte and entry limits as bytes arrive.

Failure leaves nothing behind in LAYER mode: the layer is built in a hidden sibling directory
that is renamed to *dest* only on success and removed otherwise. In ROOTFS mode a seekable
source is first read through once without writing (every entry checked, the compression and
tar structure verified to the end, limits enforced), so a malformed, truncated or hostile
layer changes nothing. What that pre-pass cannot see is the state of the tree: a failure during
the writing pass (a symlink already in the tree where the layer needs a directory, a full
disk, a permission error) leaves the entries before the failing one applied, and directory
metadata not yet restored. Nothing outside *dest* is ever touched.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from layerfs import hostfs
from layerfs.errors import LayerFormatError, oserror
from layerfs.progress import Task
from layerfs.tar._entries import Entry, Kind, classify, unsafe
from layerfs.tar._extract import Extractor
from layerfs.tar._streams import CHUNK, ForwardReader, HashingReader, digest_of
from layerfs.tar._tarinfo import StrictTarInfo
from layerfs.tar.compression import (
    Compression,
    Prefixed,
    detect_compression,
    open_decompressed,
    read_head,
)
from layerfs.types import Digest
from layerfs.whiteout import UpperFormat

DEFAULT_MAX_BYTES = 64 << 30  # bytes of uncompressed tar
DEFAULT_MAX_ENTRIES = 10_000_000


class ApplyMode(enum.Enum):
    """LAYER: a new overlayfs lower layer; ROOTFS: applied onto a tree, like ``umoci``."""

    LAYER = "layer"
    ROOTFS = "rootfs"


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply a layer; the limits bound the uncompressed tar, checked while streaming."""

    mode: ApplyMode = ApplyMode.LAYER
    upper_format: UpperFormat = UpperFormat()  # noqa: RUF009 - frozen value
    same_owner: bool = field(default_factory=_is_root)
    max_bytes: int = DEFAULT_MAX_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class ApplyResult:
    """What was applied: entry count, uncompressed size, diff_id and blob digest."""

    entries: int
    size: int
    diff_id: Digest
    digest: Digest


def apply_layer(
    src: BinaryIO | os.PathLike[str] | str,
    dest: os.PathLike[str] | str,
    *,
    options: ApplyOptions = ApplyOptions(),
    progress: Task | None = None,
) -> ApplyResult:
    """Apply the layer blob *src* (a path or a binary stream) to *dest*.

    LAYER mode creates *dest*, which must not exist (``FileExistsError``); ROOTFS mode
    changes the existing directory *dest*. *progress* advances by the blob bytes consumed.
    Raises :class:`~layerfs.errors.UnsafeLayerError` for an entry that would reach outside
    *dest*, :class:`~layerfs.errors.LayerFormatError` for malformed input or a passed limit,
    and ``OSError`` for host failures.
    """
    with _opened(src) as stream:
        if options.mode is ApplyMode.LAYER:
            return _apply_new(stream, Path(dest), options, progress)
        return _apply_onto(stream, Path(dest), options, progress)


@contextlib.contextmanager
def _opened(src: BinaryIO | os.PathLike[str] | str) -> Iterator[BinaryIO]:
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb", buffering=0) as f:
            yield cast(BinaryIO, f)
    else:
        yield src


def _apply_new(
    src: BinaryIO, dest: Path, options: ApplyOptions, progress: Task | None
) -> ApplyResult:
    if os.path.lexists(dest):
        raise oserror(17, str(dest))  # EEXIST: a layer directory is never merged into
    tmp = dest.parent / f".{dest.name}.partial-{secrets.token_hex(6)}"
    os.mkdir(tmp, 0o700)
    try:
        root = hostfs.open_root(tmp)
        try:
            extractor = Extractor(
                root,
                rootfs=False,
                upper_format=options.upper_format,
                same_owner=options.same_owner,
            )
            try:
                result = _run(src, extractor, options, progress)
            finally:
                extractor.close()
        finally:
            os.close(root)
        if os.path.lexists(dest):
            raise oserror(17, str(dest))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _seekable(src: BinaryIO) -> bool:
    try:
        return src.seekable()
    except (AttributeError, ValueError):
        return False


def _apply_onto(
    src: BinaryIO, dest: Path, options: ApplyOptions, progress: Task | None
) -> ApplyResult:
    root = hostfs.open_root(dest)
    try:
        if _seekable(src):
            start = src.tell()
            _run(src, None, options, None)
            src.seek(start)
        extractor = Extractor(
            root, rootfs=True, upper_format=options.upper_format, same_owner=options.same_owner
        )
        try:
            return _run(src, extractor, options, progress)
        finally:
            extractor.close()
    finally:
        os.close(root)


class _SymlinkTracker:
    """The pre-pass's memory of which paths the layer has made symlinks so far.

    Lets the pre-pass refuse ``a -> /etc`` followed by ``a/passwd`` (or a hard link through
    ``a``) before anything is written; symlinks already in the tree are found while writing.
    """

    def __init__(self) -> None:
        self._links: set[str] = set()

    def check(self, entry: Entry) -> None:
        if entry.kind in (Kind.WHITEOUT, Kind.OPAQUE, Kind.SKIP):
            return  # writes nothing through a symlink of this layer: below one it does nothing
        if self._links:
            for where in (entry.parent, entry.link.rpartition("/")[0]):
                self._check_parents(entry, where)
        if entry.kind is Kind.SYMLINK:
            self._links.add(entry.path)
        else:
            self._links.discard(entry.path)

    def _check_parents(self, entry: Entry, parent: str) -> None:
        while parent:
            if parent in self._links:
                raise unsafe(entry.raw, f"parent {parent!r} is a symlink")
            parent = parent.rpartition("/")[0]


def _run(
    src: BinaryIO,
    extractor: Extractor | None,
    options: ApplyOptions,
    progress: Task | None,
) -> ApplyResult:
    """Stream the whole blob once; with no *extractor* only check it (the ROOTFS pre-pass).

    The check pass hashes nothing; for a plain tar the blob is the tar, so it is hashed once.
    """
    checking = extractor is None
    head = read_head(src)
    plain = detect_compression(head) is Compression.NONE
    blob = HashingReader(
        cast(BinaryIO, Prefixed(head, src)), progress=progress, hashing=not (checking or plain)
    )
    buffered = cast(BinaryIO, io.BufferedReader(blob, CHUNK))
    tar_stream = HashingReader(
        open_decompressed(buffered),
        limit=options.max_bytes,
        what="uncompressed layer",
        hashing=not checking,
    )
    reader = ForwardReader(cast(BinaryIO, tar_stream))
    entries = 0
    tracker = _SymlinkTracker()
    try:
        tf = _open_tar(reader)
        members = cast(list[tarfile.TarInfo], tf.members)  # type: ignore[attr-defined]
        last: tarfile.TarInfo | None = None
        while (member := _next_member(tf, last, reader)) is not None:
            last = member
            entries += 1
            if entries > options.max_entries:
                raise LayerFormatError(
                    f"layer has more than the limit of {options.max_entries} entries"
                )
            members.clear()  # tarfile keeps every member otherwise
            entry = classify(member, options.max_bytes)
            if extractor is not None:
                _apply_entry(extractor, entry, member, reader)
            else:
                tracker.check(entry)
    except tarfile.TarError as exc:
        raise LayerFormatError(f"malformed layer tar after {entries} entries: {exc}") from exc
    tar_stream.drain()
    while buffered.read(CHUNK):
        pass
    if extractor is not None:
        extractor.finish()
    diff_id = digest_of(tar_stream.hash)
    digest = diff_id if plain else digest_of(blob.hash)
    return ApplyResult(entries, tar_stream.count, diff_id, digest)


# What ``tarfile`` raises for header fields it parses without checking (GNU sparse maps)
_PARSE_ERRORS = (ValueError, OverflowError, IndexError)


def _bad_header(last: tarfile.TarInfo | None, exc: Exception) -> LayerFormatError:
    where = f"after entry {last.name!r}" if last is not None else "at the start"
    return LayerFormatError(f"malformed layer tar: bad header {where}: {exc}")


def _open_tar(reader: ForwardReader) -> tarfile.TarFile:
    """Open the tar stream (``tarfile`` reads the first header here)."""
    try:
        return tarfile.open(fileobj=cast(BinaryIO, reader), mode="r:", tarinfo=StrictTarInfo)
    except _PARSE_ERRORS as exc:
        raise _bad_header(None, exc) from exc


def _next_member(
    tf: tarfile.TarFile, last: tarfile.TarInfo | None, reader: ForwardReader
) -> tarfile.TarInfo | None:
    """The next member, or None at the end of the archive.

    A tar whose stream ends right after the complete data of its last member, without the
    padding to 512 bytes and the two zero blocks, ends there (umoci 0.4.7's ``insert`` writes
    such layers, and Go's ``archive/tar`` reads them). Data cut short stays an error.
    """
    try:
        return tf.next()
    except _PARSE_ERRORS as exc:
        raise _bad_header(last, exc) from exc
    except tarfile.ReadError:
        if last is None or last.sparse is not None or not reader.at_end():
            raise
        if reader.tell() < last.offset_data + (last.size if last.isreg() else 0):
            raise
        return None


def _apply_entry(
    extractor: Extractor, entry: Entry, member: tarfile.TarInfo, reader: ForwardReader
) -> None:
    if reader.tell() != member.offset_data:
        reader.seek(member.offset_data)
    extractor.apply(entry, member, reader.read)
