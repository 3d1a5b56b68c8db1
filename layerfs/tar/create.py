"""Writing an upper directory as a deterministic OCI layer (changeset) tar.

The upper is read in either overlayfs format (see :mod:`layerfs.tar._upper`) and written as:
whiteouts as ``.wh.NAME`` entries, an opaque directory as its own entry followed by
``.wh..wh..opq``, hard links (same device and inode within the upper) as links to the first
name in walk order, xattrs as PAX ``SCHILY.xattr.*`` records (overlayfs' own xattrs dropped).
A file carrying ``*.overlay.metacopy`` holds only metadata: its data is read from the top-most
lower that has a regular file at the same path.

Same tree, same bytes: entries are sorted by name bytes within each directory (depth first),
written in PAX format with empty user and group names, whole-second mtimes, no atime or ctime;
whiteouts and opaque markers have mode 0, owner 0:0 and mtime 0; gzip headers carry mtime 0
and no file name; zstd always runs in its multi-threaded mode, whose output does not depend
on the number of threads. The root directory itself is not written (as docker and buildkit).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, cast

import zstandard

from layerfs import hostfs
from layerfs.errors import LayerFormatError
from layerfs.layer import HostLayer
from layerfs.progress import Task
from layerfs.stack import Stack
from layerfs.tar._header import pack_plain, plain_header
from layerfs.tar._streams import CHUNK, BackgroundWriter, HashingWriter, digest_of
from layerfs.tar._upper import DirScan, proc_path, public_xattrs, scan_dir, sort_key, xattr_names
from layerfs.tar.compression import MEDIA_TYPES, Compression
from layerfs.types import Digest
from layerfs.whiteout import METACOPY_XATTRS, OPAQUE_MARKER, whiteout_file_name

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class CreateOptions:
    """Compression of the blob; ``threads=0`` means every core (zstd only).

    *exclude*: absolute in-layer paths (``/srv/data``) left out, with everything below them.
    """

    compression: Compression = Compression.ZSTD
    level: int = 3
    threads: int = 0
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LayerDescriptor:
    """What a manifest needs: blob digest and size, diff_id, media type."""

    digest: Digest
    diff_id: Digest
    size: int
    media_type: str


class _TarOut:
    """Buffers tar headers and small data; a background thread hashes the tar (diff_id) and
    feeds the compressor."""

    def __init__(self, sink: BinaryIO, progress: Task | None) -> None:
        self._hashing = HashingWriter(sink)
        self._out = BackgroundWriter(self._hashing)
        self._buf = bytearray()
        self._progress = progress
        self.offset = 0

    @property
    def hash(self) -> HashingWriter:
        return self._hashing

    def write(self, data: bytes) -> None:
        self.offset += len(data)
        if len(data) >= CHUNK:
            self.flush()
            self._out.write(data)
            self._report(len(data))
            return
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._out.write(self._buf)  # handed over: a new buffer takes its place
            self._report(len(self._buf))
            self._buf = bytearray()

    def _report(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(n)

    def pad(self) -> None:
        rest = self.offset % BLOCK
        if rest:
            self.write(bytes(BLOCK - rest))

    def finish(self) -> None:
        """End-of-archive blocks, padded to a whole record like tar and ``tarfile``."""
        self.write(bytes(2 * BLOCK))
        rest = self.offset % RECORD
        if rest:
            self.write(bytes(RECORD - rest))
        self.flush()
        self._out.close()

    def abandon(self) -> None:
        self._out.abandon()


def create_layer(
    upper: os.PathLike[str] | str,
    out: BinaryIO,
    *,
    lowers: Sequence[os.PathLike[str] | str] = (),
    options: CreateOptions = CreateOptions(),
    progress: Task | None = None,
) -> LayerDescriptor:
    """Write the changes recorded in *upper* as a layer blob to *out*.

    *lowers* (top-most first) are read only for the data of metacopy files, through the
    core (a read-only :class:`~layerfs.Stack` over them). *progress* advances by the
    uncompressed tar bytes produced.
    Raises :class:`~layerfs.errors.LayerFormatError` when a file changes size while it is
    read, or when a metacopy file has no data below it.
    """
    blob = HashingWriter(out)
    with _compressor(blob, options) as compressed:
        tar = _TarOut(compressed, progress)
        try:
            layer = HostLayer(upper)
            below = Stack(lowers) if lowers else None
            try:
                _Walker(tar, layer, below, options.exclude).walk(layer.root(), "")
            finally:
                layer.close()
                if below is not None:
                    below.close()
            tar.finish()
        except BaseException:
            tar.abandon()
            raise
    blob.flush()
    return LayerDescriptor(
        digest=digest_of(blob.hash),
        diff_id=digest_of(tar.hash.hash),
        size=blob.count,
        media_type=MEDIA_TYPES[options.compression],
    )


@contextlib.contextmanager
def _compressor(sink: HashingWriter, options: CreateOptions) -> Iterator[BinaryIO]:
    """A writer compressing into *sink*; the stream is finished when the block exits cleanly."""
    if options.compression is Compression.NONE:
        yield cast(BinaryIO, sink)
    elif options.compression is Compression.GZIP:
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=options.level, fileobj=sink, mtime=0
        ) as gz:
            yield cast(BinaryIO, gz)
    else:
        threads = options.threads if options.threads > 0 else -1
        cctx = zstandard.ZstdCompressor(level=options.level, threads=threads)
        writer = cctx.stream_writer(cast(BinaryIO, sink), closefd=False)
        yield cast(BinaryIO, writer)
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()  # type: ignore[no-untyped-call]


def _info(path: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    """A header with only the fields that belong to the tree (see the module docstring)."""
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = st.st_uid
    info.gid = st.st_gid
    info.mtime = st.st_mtime_ns // 1_000_000_000
    info.uname = info.gname = ""
    return info


def _plain_file_header(path: str, st: os.stat_result) -> bytes | None:
    """What ``_info`` + ``_emit`` write for a regular file without xattrs, when that is a plain
    ustar header; None otherwise."""
    mtime = st.st_mtime_ns // 1_000_000_000
    return pack_plain(path, st.st_mode, st.st_uid, st.st_gid, st.st_size, mtime, tarfile.REGTYPE)


def _marker(path: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.mode = 0
    info.mtime = 0
    return info


class _Walker:
    """Depth-first, sorted walk of the upper that writes one entry per object."""

    def __init__(
        self, tar: _TarOut, layer: HostLayer, lowers: Stack | None, exclude: frozenset[str]
    ) -> None:
        self._tar = tar
        self._layer = layer
        self._lowers = lowers
        self._links: dict[tuple[int, int], str] = {}
        self._exclude = {path.strip("/") for path in exclude}

    def _emit(self, info: tarfile.TarInfo, xattrs: dict[str, bytes] | None = None) -> None:
        if xattrs:
            info.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
        header = plain_header(info)
        if header is None:
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self._tar.write(header)

    def walk(self, dir_fd: int, path: str) -> None:
        """Write the contents of directory *dir_fd* (at archive path *path*)."""
        scan: DirScan = scan_dir(self._layer, dir_fd)
        if scan.opaque:
            self._emit(_marker(_join(path, OPAQUE_MARKER)))
        items: list[tuple[bytes, str, os.stat_result | None]] = [
            (sort_key(name), name, st) for name, st in scan.children
        ]
        items += [
            (sort_key(whiteout_file_name(name)), name, None)
            for name in scan.whiteouts
            if name not in {n for n, _ in scan.children}
        ]
        for _, name, st in sorted(items, key=lambda item: item[0]):
            if self._exclude and _join(path, name) in self._exclude:
                continue
            if st is None:
                self._emit(_marker(_join(path, whiteout_file_name(name))))
            else:
                self._entry(dir_fd, name, _join(path, name), st)

    def _entry(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            sub = self._layer.open_dir(dir_fd, name)
            try:
                self._emit(_info(path, st, tarfile.DIRTYPE), _xattrs(proc_path(sub)))
                self.walk(sub, path)
            finally:
                self._layer.close_dir(sub)
            return
        if stat.S_ISSOCK(mode):
            return  # sockets cannot be carried by tar; they are runtime objects anyway
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key)
            if first is not None:
                info = _info(path, st, tarfile.LNKTYPE)
                info.linkname = first
                self._emit(info)
                return
            self._links[key] = path
        if stat.S_ISREG(mode):
            self._file(dir_fd, name, path, st)
        else:
            self._special(dir_fd, name, path, st)

    def _special(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            info = _info(path, st, tarfile.SYMTYPE)
            info.linkname = os.readlink(name, dir_fd=dir_fd)
        elif stat.S_ISFIFO(mode):
            info = _info(path, st, tarfile.FIFOTYPE)
        else:
            info = _info(path, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
            info.devmajor = os.major(st.st_rdev)
            info.devminor = os.minor(st.st_rdev)
        with hostfs.opath(dir_fd, name) as p:
            self._emit(info, _xattrs(p))

    def _file(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> None:
        fd = os.open(name, _O_READ, dir_fd=dir_fd)
        try:
            names = xattr_names(fd)
            if any(x in METACOPY_XATTRS for x in names):
                self._metacopy(_info(path, st, tarfile.REGTYPE), path, public_xattrs(fd, names))
                return
            xattrs = public_xattrs(fd, names)
            header = None if xattrs else _plain_file_header(path, st)
            if header is None:
                info = _info(path, st, tarfile.REGTYPE)
                info.size = st.st_size
                self._emit(info, xattrs)
            else:
                self._tar.write(header)  # the common case: no TarInfo at all
            _copy_data(self._tar, fd, st.st_size, path)
        finally:
            os.close(fd)

    def _metacopy(self, info: tarfile.TarInfo, path: str, xattrs: dict[str, bytes]) -> None:
        """A metacopy file's data is what the lowers' merged view shows at its path."""
        node = None
        if self._lowers is not None:
            try:
                node = self._lowers.resolve("/" + path)
            except OSError:
                node = None
        if node is None or node.kind != stat.S_IFREG or self._lowers is None:
            raise LayerFormatError(f"metacopy file {path!r} has no data in the lowers")
        with self._lowers.open_node(node, os.O_RDONLY) as data:
            fd = data.fileno()
            info.size = os.fstat(fd).st_size  # what the data file holds
            self._emit(info, xattrs)
            _copy_data(self._tar, fd, info.size, path)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _xattrs(target: int | str) -> dict[str, bytes]:
    return public_xattrs(target, xattr_names(target))


def _copy_data(tar: _TarOut, fd: int, size: int, path: str) -> None:
    """Copy exactly *size* bytes of *fd* into the tar, then pad to a block."""
    left = size
    while left:
        data = os.read(fd, min(left, CHUNK))
        if not data:
            raise LayerFormatError(f"{path!r} shrank while it was being read")
        tar.write(data)
        left -= len(data)
    tar.pad()
