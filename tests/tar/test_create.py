"""create_layer: whiteout and opaque conversion, links, xattrs, metacopy, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from layerfs.errors import LayerFormatError
from layerfs.tar import MEDIA_TYPES, Compression, CreateOptions, create_layer, open_decompressed

pytestmark = pytest.mark.timeout(60)


def _create(upper: Path, kind: Compression = Compression.NONE, **kw: object) -> bytes:
    out = io.BytesIO()
    desc = create_layer(upper, out, options=CreateOptions(compression=kind), **kw)  # type: ignore[arg-type]
    data = out.getvalue()
    assert desc.size == len(data)
    assert desc.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert desc.media_type == MEDIA_TYPES[kind]
    tar = open_decompressed(io.BytesIO(data)).read()
    assert desc.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    return data


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=open_decompressed(io.BytesIO(data)), mode="r|") as tf:
        return list(tf)


def _names(data: bytes) -> list[str]:
    return [m.name for m in _members(data)]


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    up = tmp_path / "upper"
    (up / "etc").mkdir(parents=True)
    (up / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    os.mknod(up / "etc" / "shadow", stat.S_IFCHR, 0)  # overlayfs whiteout
    (up / "etc" / ".wh.group").write_bytes(b"")  # OCI-style whiteout in the upper
    (up / "opq1").mkdir()
    os.setxattr(up / "opq1", "trusted.overlay.opaque", b"y")
    (up / "opq1" / "inside").write_bytes(b"i")
    (up / "opq2").mkdir()
    (up / "opq2" / ".wh..wh..opq").write_bytes(b"")
    (up / "usr").mkdir()
    (up / "usr" / "a").write_bytes(b"linked")
    os.link(up / "usr" / "a", up / "usr" / "b")
    os.symlink("a", up / "usr" / "s")
    os.mkfifo(up / "usr" / "fifo")
    os.setxattr(up / "usr" / "a", "user.mime", b"text/plain")
    os.setxattr(up / "usr" / "a", "trusted.overlay.origin", b"private")
    return up


def test_entries_in_order(upper: Path) -> None:
    assert _names(_create(upper)) == [
        "etc",
        "etc/.wh.group",
        "etc/.wh.shadow",
        "etc/hosts",
        "opq1",
        "opq1/.wh..wh..opq",
        "opq1/inside",
        "opq2",
        "opq2/.wh..wh..opq",
        "usr",
        "usr/a",
        "usr/b",
        "usr/fifo",
        "usr/s",
    ]


def test_entry_fields(upper: Path) -> None:
    by_name = {m.name: m for m in _members(_create(upper))}
    wh = by_name["etc/.wh.shadow"]
    assert (wh.type, wh.size, wh.mode, wh.mtime, wh.uid) == (tarfile.REGTYPE, 0, 0, 0, 0)
    assert by_name["usr/b"].type == tarfile.LNKTYPE and by_name["usr/b"].linkname == "usr/a"
    assert by_name["usr/s"].issym() and by_name["usr/s"].linkname == "a"
    assert by_name["usr/fifo"].isfifo()
    assert by_name["usr/a"].pax_headers == {"SCHILY.xattr.user.mime": "text/plain"}
    for m in by_name.values():
        assert m.uname == "" and m.gname == ""
        assert "mtime" not in m.pax_headers and "atime" not in m.pax_headers


def test_devices_and_sockets(tmp_path: Path) -> None:
    up = tmp_path / "upper"
    up.mkdir()
    os.mknod(up / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(up / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(up / "sock"))
    sock.close()
    by_name = {m.name: m for m in _members(_create(up))}
    assert sorted(by_name) == ["loop", "null"]
    assert (by_name["null"].devmajor, by_name["null"].devminor) == (1, 3)
    assert by_name["loop"].isblk()


def test_whiteout_hardlinks_are_not_links(tmp_path: Path) -> None:
    """overlayfs shares one inode between whiteouts; each must still be its own entry."""
    up = tmp_path / "upper"
    up.mkdir()
    os.mknod(up / "w1", stat.S_IFCHR, 0)
    os.link(up / "w1", up / "w2")
    assert _names(_create(up)) == [".wh.w1", ".wh.w2"]


@pytest.mark.parametrize("kind", list(Compression))
def test_same_tree_same_bytes(upper: Path, tmp_path: Path, kind: Compression) -> None:
    paths = [upper / "etc" / "hosts", upper / "usr"]
    for p in paths:
        os.utime(p, ns=(1_500_000_000_000_000_100, 1_600_000_000_000_000_100))
    first = _create(upper, kind)
    for p in paths:
        os.utime(p, ns=(1_500_000_007_000_000_000, 1_600_000_000_900_000_000))  # same second
    assert _create(upper, kind) == first


def test_gzip_header_is_fixed(upper: Path) -> None:
    data = _create(upper, Compression.GZIP)
    assert data[3] == 0  # no FNAME
    assert data[4:8] == b"\0\0\0\0"  # mtime 0
    assert gzip.decompress(data)


def test_zstd_is_multithreaded_and_thread_count_independent(upper: Path) -> None:
    outs = []
    for threads in (1, 2):
        out = io.BytesIO()
        create_layer(upper, out, options=CreateOptions(threads=threads))
        outs.append(out.getvalue())
    assert outs[0] == outs[1]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(outs[0])


def test_metacopy_data_comes_from_lower(tmp_path: Path) -> None:
    low_top, low_base, up = tmp_path / "l1", tmp_path / "l2", tmp_path / "upper"
    for p in (low_top, low_base, up):
        (p / "bin").mkdir(parents=True)
    (low_base / "bin" / "tool").write_bytes(b"real data")
    (low_top / "bin" / "tool").write_bytes(b"")
    os.setxattr(low_top / "bin" / "tool", "trusted.overlay.metacopy", b"")  # metadata only
    (up / "bin" / "tool").write_bytes(b"")
    os.chmod(up / "bin" / "tool", 0o700)
    os.setxattr(up / "bin" / "tool", "trusted.overlay.metacopy", b"")
    data = _create(up, lowers=[low_top, low_base])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.getmember("bin/tool")
        assert member.mode == 0o700
        assert tf.extractfile(member).read() == b"real data"  # type: ignore[union-attr]
        assert member.pax_headers == {}


def test_metacopy_stops_at_a_whiteout(tmp_path: Path) -> None:
    low_top, low_base, up = tmp_path / "l1", tmp_path / "l2", tmp_path / "upper"
    for p in (low_top, low_base, up):
        p.mkdir()
    (low_base / "f").write_bytes(b"hidden")
    os.mknod(low_top / "f", stat.S_IFCHR, 0)
    (up / "f").write_bytes(b"")
    os.setxattr(up / "f", "trusted.overlay.metacopy", b"")
    with pytest.raises(LayerFormatError, match="metacopy"):
        _create(up, lowers=[low_top, low_base])


def test_metacopy_stops_at_an_opaque_dir(tmp_path: Path) -> None:
    low_top, low_base, up = tmp_path / "l1", tmp_path / "l2", tmp_path / "upper"
    for p in (low_top, low_base, up):
        (p / "d").mkdir(parents=True)
    (low_base / "d" / "f").write_bytes(b"hidden")
    os.setxattr(low_top / "d", "user.overlay.opaque", b"y")
    (up / "d" / "f").write_bytes(b"")
    os.setxattr(up / "d" / "f", "user.overlay.metacopy", b"")
    with pytest.raises(LayerFormatError, match="metacopy"):
        _create(up, lowers=[low_top, low_base])


def test_empty_upper_is_an_empty_tar(tmp_path: Path) -> None:
    (tmp_path / "upper").mkdir()
    data = _create(tmp_path / "upper")
    assert data == bytes(tarfile.RECORDSIZE)


class _FailingSink(io.RawIOBase):
    """An output that takes *good* bytes and then fails like a full disk."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.left = good

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(data) > self.left:
            raise OSError(28, "No space left on device")
        self.left -= len(data)
        return len(data)


@pytest.mark.parametrize("kind", list(Compression))
def test_output_error_is_raised_not_swallowed(tmp_path: Path, kind: Compression) -> None:
    """The writer thread's failure reaches the caller (and the walk stops, no hang)."""
    for i in range(40):
        (tmp_path / f"f{i:02d}").write_bytes(os.urandom(300_000))
    with pytest.raises(OSError, match="No space left"):
        create_layer(tmp_path, _FailingSink(1 << 20), options=CreateOptions(compression=kind))  # type: ignore[arg-type]
