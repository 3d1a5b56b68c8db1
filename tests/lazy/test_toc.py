"""The TOC parsers: real blobs from skopeo and ctr-remote, and hostile TOCs of our own.

Each real layer's TOC, read with :class:`BytesRanges`, lists the entries ``umoci unpack``
shows with the same type, mode, owner, size, link target, xattrs and device numbers, and
every file decoded chunk by chunk (each chunk checked against its digest) equals the file
umoci wrote. Hostile TOCs give one :class:`LayerFormatError` (or :class:`DigestMismatchError`
for a TOC that does not match its annotation) and nothing else.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from layerfs.errors import DigestMismatchError, LayerFormatError, UnsafeLayerError
from layerfs.lazy import EntryType, Toc, TocFormat, read_toc, toc_format
from layerfs.lazy.decode import decompress, verify, zeros
from layerfs.lazy.layer import priority_ranges
from layerfs.lazy.source import BytesRanges
from layerfs.registry.ranges import merge_ranges
from layerfs.store.partial import merge, subtract

from .conftest import Images
from .synthetic import estargz_blob, sha, zstd_chunked_blob, zstd_frame

pytestmark = [pytest.mark.timeout(300)]


def manifest_layers(ref: str) -> list[dict[str, Any]]:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    doc = httpx.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers=headers).json()
    return list(doc["layers"])


def blob(ref: str, digest: str) -> bytes:
    host, _, rest = ref.partition("/")
    repo = rest.rpartition(":")[0]
    return httpx.get(f"http://{host}/v2/{repo}/blobs/{digest}").content


def content(toc: Toc, data: bytes, path: str) -> bytes:
    entry = toc.get(path)
    assert entry is not None
    pieces = []
    for chunk in entry.chunks:
        raw = data[chunk.start : chunk.end]
        plain = zeros(chunk) if chunk.zeros else decompress(toc.format, chunk, raw)
        pieces.append(verify(chunk, plain, path))
    return b"".join(pieces)


def check_against_rootfs(toc: Toc, data: bytes, rootfs: Path) -> int:
    """Every non-whiteout TOC entry matches the host tree; returns how many were compared."""
    compared = 0
    for entry in toc.entries:
        if entry.path == "/" or os.path.basename(entry.path).startswith(".wh."):
            continue
        host = rootfs / entry.path.lstrip("/")
        if not os.path.lexists(host):
            continue  # deleted by the next layer
        st = host.lstat()
        compared += 1
        assert stat.S_IMODE(st.st_mode) == entry.mode, entry.path
        assert (st.st_uid, st.st_gid) == (entry.uid, entry.gid), entry.path
        if entry.type is EntryType.REG:
            assert content(toc, data, entry.path) == host.read_bytes(), entry.path
            assert entry.size == st.st_size
        elif entry.type is EntryType.SYMLINK:
            assert os.readlink(host) == entry.link
        elif entry.type is EntryType.HARDLINK:
            assert os.path.samefile(host, rootfs / entry.hardlink.lstrip("/"))
        elif entry.type is EntryType.CHAR:
            assert (entry.devmajor, entry.devminor) == (os.major(st.st_rdev), os.minor(st.st_rdev))
        kinds = {EntryType.DIR: stat.S_ISDIR, EntryType.FIFO: stat.S_ISFIFO}
        if entry.type in kinds:
            assert kinds[entry.type](st.st_mode), entry.path
        for name, value in entry.xattrs.items():
            assert os.getxattr(host, name, follow_symlinks=False) == value
    return compared


@pytest.mark.network
@pytest.mark.interop
@pytest.mark.root
@pytest.mark.parametrize("form", ["zstd_chunked", "estargz"])
def test_toc_of_tool_made_layers_matches_umoci(images: Images, form: str) -> None:
    ref = getattr(images, form)
    wanted = TocFormat.ZSTD_CHUNKED if form == "zstd_chunked" else TocFormat.ESTARGZ
    tocs = []
    for desc in manifest_layers(ref):
        assert toc_format(desc["annotations"]) is wanted
        data = blob(ref, desc["digest"])
        toc, _ = read_toc(wanted, desc["annotations"], BytesRanges(data))
        assert toc.blob_size == len(data) and toc.content_end < len(data)
        tocs.append((toc, data))
    assert sum(check_against_rootfs(toc, data, images.rootfs) for toc, data in tocs) >= 30
    first, second = tocs[0][0], tocs[1][0]
    motd = first.get("/etc/motd")
    assert motd is not None and motd.xattrs == {"user.origin": b"lazy"}
    link = first.get("/etc/motd.link")
    assert link is not None and link.type is EntryType.HARDLINK and link.hardlink == "/etc/motd"
    big = first.get("/data/big")
    assert big is not None and big.size == 3_000_000
    assert second.get("/etc/.wh.gone") is not None and second.get("/etc/added") is not None


@pytest.mark.network
@pytest.mark.interop
@pytest.mark.root
def test_zstd_chunked_cuts_big_files_and_marks_zeros(images: Images) -> None:
    desc = manifest_layers(images.zstd_chunked)[0]
    data = blob(images.zstd_chunked, desc["digest"])
    toc, _ = read_toc(TocFormat.ZSTD_CHUNKED, desc["annotations"], BytesRanges(data))
    big, holes = toc.get("/data/big"), toc.get("/data/holes")
    assert big is not None and len(big.chunks) > 1
    assert holes is not None and any(c.zeros for c in holes.chunks)
    assert content(toc, data, "/data/holes") == b"head" + bytes(1 << 20) + b"tail"
    assert content(toc, data, "/data/big") == (images.rootfs / "data" / "big").read_bytes()


@pytest.mark.network
@pytest.mark.interop
@pytest.mark.root
def test_estargz_prioritised_files_come_first(images: Images) -> None:
    desc = manifest_layers(images.estargz)[0]
    data = blob(images.estargz, desc["digest"])
    toc, _ = read_toc(TocFormat.ESTARGZ, desc["annotations"], BytesRanges(data))
    assert toc.prioritized == ("/etc/motd", "/bin/busybox")
    ranges = priority_ranges(toc, [], toc.blob_size)
    motd = toc.get("/etc/motd")
    assert motd is not None and ranges[0] == (motd.chunks[0].start, motd.chunks[0].end)
    assert sum(e - s for s, e in ranges) == toc.blob_size
    assert merge(ranges) == [(0, toc.blob_size)]


# -- hostile TOCs -------------------------------------------------------------------------------

PAYLOAD = zstd_frame(b"x" * 100)


def reg(name: str, **fields: Any) -> dict[str, Any]:
    entry = {
        "type": "reg",
        "name": name,
        "mode": 0o644,
        "size": 100,
        "offset": 0,
        "digest": sha(b"x" * 100),
        "chunkDigest": sha(b"x" * 100),
    }
    entry.update(fields)
    return entry


HOSTILE: dict[str, tuple[list[dict[str, Any]], type[Exception], str]] = {
    "dot-dot": ([reg("../../etc/shadow")], UnsafeLayerError, "escapes the layer root"),
    "absolute": ([reg("/etc/shadow")], UnsafeLayerError, "absolute path"),
    "offset past blob": ([reg("a", offset=10**9)], LayerFormatError, "outside the blob"),
    "absurd size": ([reg("a", size=1 << 60)], LayerFormatError, "not an integer in"),
    "negative mode": ([reg("a", mode=-1)], LayerFormatError, "mode"),
    "chunk past file": (
        [
            reg("a", chunkSize=60),
            {
                "type": "chunk",
                "name": "a",
                "offset": 5,
                "chunkOffset": 90,
                "chunkSize": 50,
                "chunkDigest": sha(b""),
            },
        ],
        LayerFormatError,
        "does not continue",
    ),
    "hard link to nowhere": (
        [{"type": "hardlink", "name": "b", "linkName": "missing", "mode": 0o644}],
        LayerFormatError,
        "no earlier entry",
    ),
    "chunk without digest": (
        [reg("a", digest=None, chunkDigest=None)],
        LayerFormatError,
        "no sha256",
    ),
    "unknown type": ([{"type": "socket", "name": "s"}], LayerFormatError, "unknown type"),
    "orphan chunk": (
        [{"type": "chunk", "name": "z", "offset": 1, "chunkOffset": 0, "chunkSize": 1}],
        LayerFormatError,
        "no earlier regular file",
    ),
}


@pytest.mark.parametrize("fmt", [TocFormat.ESTARGZ, TocFormat.ZSTD_CHUNKED])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_toc_is_one_format_error(fmt: TocFormat, case: str) -> None:
    entries, error, words = HOSTILE[case]
    build = estargz_blob if fmt is TocFormat.ESTARGZ else zstd_chunked_blob
    entries = [{**e, "offset": e["offset"] or 1} if "offset" in e else e for e in entries]
    data, annotations = build(PAYLOAD, entries)
    with pytest.raises(error, match=words) as caught:
        read_toc(fmt, annotations, BytesRanges(data))
    assert "\n" not in str(caught.value)


def test_valid_synthetic_toc_reads() -> None:
    entries = [reg("a", offset=1, endOffset=1 + len(PAYLOAD))]
    data, annotations = zstd_chunked_blob(b"\0" + PAYLOAD, entries)
    toc, _ = read_toc(TocFormat.ZSTD_CHUNKED, annotations, BytesRanges(data))
    assert content(toc, data, "/a") == b"x" * 100


@pytest.mark.parametrize("fmt", [TocFormat.ESTARGZ, TocFormat.ZSTD_CHUNKED])
def test_toc_that_does_not_match_its_annotation_is_refused(fmt: TocFormat) -> None:
    build = estargz_blob if fmt is TocFormat.ESTARGZ else zstd_chunked_blob
    data, annotations = build(b"\0" + PAYLOAD, [reg("a", offset=1)])
    forged = {
        key: sha(b"other") if "digest" in key or "checksum" in key else value
        for key, value in annotations.items()
    }
    with pytest.raises(DigestMismatchError, match="TOC hashes to"):
        read_toc(fmt, forged, BytesRanges(data))


def test_garbage_footer_and_position_are_format_errors() -> None:
    data, annotations = estargz_blob(b"\0" + PAYLOAD, [reg("a", offset=1)])
    with pytest.raises(LayerFormatError, match="no eStargz footer"):
        read_toc(TocFormat.ESTARGZ, annotations, BytesRanges(data[:-19] + b"X" + data[-18:]))
    data, annotations = zstd_chunked_blob(b"\0" + PAYLOAD, [reg("a", offset=1)])
    for bad in ("1:2:3", "99999999:10:10:1", "9:1:1:7"):
        key = "io.github.containers.zstd-chunked.manifest-position"
        with pytest.raises(LayerFormatError, match="manifest"):
            read_toc(TocFormat.ZSTD_CHUNKED, {**annotations, key: bad}, BytesRanges(data))


def test_corrupt_chunk_is_never_returned() -> None:
    data, annotations = zstd_chunked_blob(b"\0" + PAYLOAD, [reg("a", offset=1)])
    toc, _ = read_toc(TocFormat.ZSTD_CHUNKED, annotations, BytesRanges(data))
    chunk = toc.by_path["/a"].chunks[0]
    other = zstd_frame(b"y" * 100)
    with pytest.raises(DigestMismatchError, match="hashes to"):
        verify(chunk, decompress(toc.format, chunk, other), "/a")
    with pytest.raises(LayerFormatError, match="corrupt zstd"):
        decompress(toc.format, chunk, b"\x28\xb5\x2f\xfd" + b"\xff" * 20)


def test_range_arithmetic() -> None:
    assert merge([(5, 9), (0, 3), (3, 4), (8, 12)]) == [(0, 4), (5, 12)]
    assert subtract(0, 10, [(2, 4), (6, 20)]) == [(0, 2), (4, 6)]
    assert subtract(3, 5, []) == [(3, 5)]
    assert merge_ranges([(0, 4), (4, 8), (10, 12)]) == [(0, 8), (10, 12)]
    assert merge_ranges([(0, 4), (6, 8)], gap=2) == [(0, 8)]
    assert merge_ranges([(0, 4), (4, 8)], limit=6) == [(0, 4), (4, 8)]


def test_toc_json_is_what_annotations_check() -> None:
    data, annotations = estargz_blob(b"\0" + PAYLOAD, [reg("a", offset=1)])
    toc, raw = read_toc(TocFormat.ESTARGZ, annotations, BytesRanges(data))
    assert toc.get("/a") is not None and raw.startswith(b"stargz.index.json\0")
    own = toc.get("/stargz.index.json")
    assert own is not None
    assert json.loads(content(toc, data, own.path))["entries"][0]["name"] == "a"


def test_modtime_keeps_nanoseconds() -> None:
    """RFC 3339 times in a TOC may carry nanoseconds (Go's RFC3339Nano); ``datetime`` keeps
    microseconds, so the fraction is read apart, as the layer's tar gives it."""
    from layerfs.lazy.toc import mtime_field

    cases = {
        "2023-11-14T22:13:20.123456789Z": 1700000000123456789,
        "2023-11-14T23:13:20.1+01:00": 1700000000100000000,
        "1969-12-31T23:59:59.5Z": -500000000,
        "2023-11-14T22:13:20Z": 1700000000000000000,
    }
    assert {text: mtime_field({"modtime": text}, "entry") for text in cases} == cases
