"""The fast tar header path writes exactly what ``tarfile`` writes, or stands aside."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from layerfs.tar import Compression, CreateOptions, create_layer
from layerfs.tar._header import plain_header

TYPES = [
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
]
names = st.one_of(
    st.text(st.characters(codec="ascii", exclude_characters="\0"), min_size=1, max_size=110),
    st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(["a" * 99, "a" * 100, "a" * 101, "d" * 99 + "/", "x/" * 50]),
)
numbers = st.one_of(
    st.integers(0, 8**7 + 10), st.integers(8**11 - 10, 8**11 + 10), st.integers(-2, 2)
)


@given(
    name=names,
    link=st.one_of(st.just(""), names),
    kind=st.sampled_from(TYPES),
    mode=st.integers(0, 0o177777),
    uid=numbers,
    gid=numbers,
    size=numbers,
    mtime=st.one_of(numbers, st.floats(0, 2e9)),
    owner=st.sampled_from(["", "root"]),
    xattr=st.booleans(),
)
def test_plain_header_is_tarfiles_header(
    name: str,
    link: str,
    kind: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: float,
    owner: str,
    xattr: bool,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    info.uname = info.gname = owner
    if xattr:
        info.pax_headers = {"SCHILY.xattr.user.k": "v"}
    try:
        expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except ValueError:
        expected = None  # tarfile refuses it (negative numbers): so must the fast path
    fast = plain_header(info)
    if fast is not None:
        assert fast == expected
        assert len(fast) == tarfile.BLOCKSIZE


def test_common_entries_take_the_fast_path() -> None:
    info = tarfile.TarInfo("usr/bin/env")
    info.size, info.mode, info.mtime = 12345, 0o755, 1_700_000_000
    assert plain_header(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    directory = tarfile.TarInfo("usr")
    directory.type = tarfile.DIRTYPE
    header = plain_header(directory)
    assert header is not None
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name == "usr"


def test_layer_headers_are_what_tarfile_writes(tmp_path: Path) -> None:
    """Every plain header create_layer writes is byte for byte tarfile's for that member."""
    tree = tmp_path / "tree"
    (tree / "dir" / "sub").mkdir(parents=True)
    (tree / "dir" / "file").write_bytes(b"x" * 1000)
    (tree / "dir" / "sub" / ("long" * 30)).write_bytes(b"")  # > 100 chars: PAX
    (tree / "dir" / "caf\u00e9").write_bytes(b"y")  # not ASCII: PAX
    os.symlink("file", tree / "dir" / "link")
    os.chmod(tree / "dir" / "file", 0o4751)
    out = io.BytesIO()
    create_layer(tree, out, options=CreateOptions(compression=Compression.NONE))
    raw = out.getvalue()
    plain = 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            if member.pax_headers:
                continue
            header = raw[member.offset : member.offset + tarfile.BLOCKSIZE]
            assert header == member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            plain += 1
    assert plain >= 4  # dir, dir/file, dir/link, dir/sub
