"""Blobs around a TOC of our choosing, in both formats' framing (for hostile-TOC tests).

Only the framing is built here (the eStargz footer and TOC member, the zstd:chunked skippable
frame and annotations); the entries are whatever the test writes, valid or not.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from typing import Any

import zstandard

from layerfs.lazy.estargz import TOC_DIGEST_ANNOTATION, TOC_NAME

ZSTD_SKIPPABLE = 0x184D2A50


def estargz_blob(payload: bytes, entries: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """*payload*, then a TOC member holding *entries*, then the 51-byte footer."""
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(TOC_NAME)
        info.size = len(toc)
        tar.addfile(info, io.BytesIO(toc))
    member = gzip.compress(tar_bytes.getvalue(), mtime=0)
    footer = (
        b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
        + b"\x1a\x00SG\x16\x00"
        + f"{len(payload):016x}STARGZ".encode()
        + b"\x01\x00\x00\xff\xff"
        + bytes(8)
    )
    assert len(footer) == 51
    annotations = {TOC_DIGEST_ANNOTATION: "sha256:" + hashlib.sha256(toc).hexdigest()}
    return payload + member + footer, annotations


def zstd_chunked_blob(
    payload: bytes, entries: list[dict[str, Any]]
) -> tuple[bytes, dict[str, str]]:
    """*payload*, then a skippable frame with the zstd-compressed TOC of *entries*."""
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    packed = zstandard.ZstdCompressor().compress(toc)
    frame = struct.pack("<II", ZSTD_SKIPPABLE, len(packed)) + packed
    offset = len(payload) + 8
    prefix = "io.github.containers.zstd-chunked."
    annotations = {
        prefix + "manifest-position": f"{offset}:{len(packed)}:{len(toc)}:1",
        prefix + "manifest-checksum": sha(packed),
    }
    return payload + frame, annotations


def zstd_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
