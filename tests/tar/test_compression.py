"""Compression detection by magic and streaming decompression."""

from __future__ import annotations

import gzip
import io

import pytest
import zstandard

from layerfs.errors import LayerFormatError
from layerfs.tar import MEDIA_TYPES, Compression, detect_compression, open_decompressed

PAYLOAD = b"tar bytes " * 10_000


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x1f\x8b\x08\x00", Compression.GZIP),
        (b"\x28\xb5\x2f\xfd\x00", Compression.ZSTD),
        (b"\x50\x2a\x4d\x18", Compression.ZSTD),  # zstd skippable frame
        (b"etc/passwd\x00", Compression.NONE),
        (b"", Compression.NONE),
    ],
)
def test_detect(head: bytes, kind: Compression) -> None:
    assert detect_compression(head) is kind


@pytest.mark.parametrize("head", [b"BZh9", b"\xfd7zXZ\x00", b"\x04\x22\x4d\x18"])
def test_refused(head: bytes) -> None:
    with pytest.raises(LayerFormatError, match="unsupported"):
        detect_compression(head)


def test_media_types() -> None:
    assert MEDIA_TYPES[Compression.ZSTD] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert MEDIA_TYPES[Compression.GZIP] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert MEDIA_TYPES[Compression.NONE] == "application/vnd.oci.image.layer.v1.tar"


@pytest.mark.parametrize(
    "blob",
    [
        PAYLOAD,
        gzip.compress(PAYLOAD),
        gzip.compress(PAYLOAD[:500]) + gzip.compress(PAYLOAD[500:]),  # multi-member
        zstandard.ZstdCompressor().compress(PAYLOAD),
        zstandard.ZstdCompressor().compress(PAYLOAD[:7])
        + zstandard.ZstdCompressor().compress(PAYLOAD[7:]),  # multi-frame
    ],
    ids=["none", "gzip", "gzip-multi", "zstd", "zstd-multi"],
)
def test_open_decompressed(blob: bytes) -> None:
    stream = open_decompressed(io.BytesIO(blob))
    out = b""
    while chunk := stream.read(4096):
        out += chunk
    assert out == PAYLOAD


@pytest.mark.parametrize(
    "blob",
    [gzip.compress(PAYLOAD)[:-20] + b"x" * 20, zstandard.ZstdCompressor().compress(PAYLOAD)[:-9]],
    ids=["gzip", "zstd-truncated"],
)
def test_corrupt_streams(blob: bytes) -> None:
    with pytest.raises(LayerFormatError):
        open_decompressed(io.BytesIO(blob)).read()


def test_zstd_window_is_bounded() -> None:
    """A frame that declares a 256 MiB window is refused before any memory is taken."""
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=28)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = cobj.compress(PAYLOAD) + cobj.flush()  # streamed: no content size, full window
    with pytest.raises(LayerFormatError, match="zstd"):
        open_decompressed(io.BytesIO(frame)).read()


def test_zstd_trailing_garbage() -> None:
    blob = zstandard.ZstdCompressor().compress(PAYLOAD) + b"garbage!"
    with pytest.raises(LayerFormatError):
        open_decompressed(io.BytesIO(blob)).read()
