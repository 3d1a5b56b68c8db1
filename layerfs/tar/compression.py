"""Layer blob compression: detection by magic bytes and streaming decompression.

OCI layers come as plain tar, tar+gzip or tar+zstd. The media type a manifest claims is not
trusted for reading: the first bytes of the blob decide. Decompression is streamed; a zstd
frame asking for a window larger than :data:`MAX_ZSTD_WINDOW` is refused, so a crafted frame
cannot make the reader allocate gigabytes before any limit on output is checked.
"""

from __future__ import annotations

import enum
import gzip
import io
import zlib
from typing import BinaryIO, cast

import zstandard

from layerfs.errors import LayerFormatError
from layerfs.tar._streams import CHUNK
from layerfs.tar._zstdframes import ZstdFrameWalker

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
_REFUSED = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x04\x22\x4d\x18": "lz4",
}
HEAD_SIZE = 6  # bytes needed to recognise every magic above
MAX_ZSTD_WINDOW = 1 << 27  # bytes: zstd's own default decoder memory limit (128 MiB)


class Compression(enum.Enum):
    """How a layer blob is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


MEDIA_TYPES: dict[Compression, str] = {
    Compression.NONE: "application/vnd.oci.image.layer.v1.tar",
    Compression.GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    Compression.ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}


def detect_compression(head: bytes) -> Compression:
    """The compression of a blob whose first bytes are *head* (at least 4 bytes when present).

    Raises :class:`LayerFormatError` for compressions that are recognised but not supported
    as layers (bzip2, xz, lz4); anything unrecognised is taken as a plain tar, which the tar
    reader then validates.
    """
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    if len(head) >= 4:
        magic = int.from_bytes(head[:4], "little")
        if magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
            return Compression.ZSTD
    for magic_bytes, name in _REFUSED.items():
        if head.startswith(magic_bytes):
            raise LayerFormatError(f"unsupported layer compression: {name}")
    return Compression.NONE


class Prefixed(io.RawIOBase):
    """Gives back the bytes already read for detection, then continues with the source."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._src = src

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._src.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._src.read(size)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Decompressed(io.RawIOBase):
    """A decompressor's output whose codec errors surface as :class:`LayerFormatError`."""

    def __init__(self, inner: BinaryIO, kind: Compression) -> None:
        super().__init__()
        self._inner = inner
        self._kind = kind

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
                raise
            raise LayerFormatError(f"corrupt {self._kind.value} stream: {exc}") from exc

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _FrameChecked(io.RawIOBase):
    """Passes compressed bytes through while a :class:`ZstdFrameWalker` follows the frames."""

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src
        self._walker = ZstdFrameWalker()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        if data:
            self._walker.feed(data)
        else:
            self._walker.finish()
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_head(src: BinaryIO) -> bytes:
    head = b""
    while len(head) < HEAD_SIZE:
        more = src.read(HEAD_SIZE - len(head))
        if not more:
            break
        head += more
    return head


def open_decompressed(src: BinaryIO) -> BinaryIO:
    """A stream of the uncompressed tar inside blob *src*, chosen by its magic bytes.

    Reads *src* sequentially (it need not be seekable) and never closes it. Multi-frame zstd
    and multi-member gzip are read to their end; a stream cut short raises
    :class:`LayerFormatError` when its end is reached.
    """
    head = read_head(src)
    kind = detect_compression(head)
    rest = cast(BinaryIO, Prefixed(head, src))
    if kind is Compression.NONE:
        return rest
    if kind is Compression.GZIP:
        inner = cast(BinaryIO, gzip.GzipFile(fileobj=rest, mode="rb"))
    else:
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        checked = cast(BinaryIO, _FrameChecked(rest))
        inner = cast(
            BinaryIO,
            dctx.stream_reader(checked, read_size=CHUNK, read_across_frames=True, closefd=False),
        )
    return cast(BinaryIO, _Decompressed(inner, kind))
