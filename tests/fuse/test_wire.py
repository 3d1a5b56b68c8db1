"""The native backend's request path without a kernel: requests written into the session's
buffer as the kernel lays them out, replies read back from a pipe and decoded field by field
with the layouts of ``include/uapi/linux/fuse.h``."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import layerfs
from fuse_mount import wire
from fuse_mount.options import sort_mount_options
from fuse_mount.session import Session

from .conftest import write_tree

NAMES = [f"file-{'x' * n}" for n in range(20)]  # every padding to 8 bytes


class Wire:
    """A session whose replies go to a pipe."""

    def __init__(self, session: Session, replies: int) -> None:
        self.session = session
        self.replies = replies
        self.unique = 0

    def call(self, opcode: int, nodeid: int, body: bytes) -> tuple[int, bytes]:
        """Serve one request; the reply's error (0 or -errno) and payload."""
        self.unique += 1
        size = wire.IN_HEADER.size + len(body)
        buf = self.session._buffer
        wire.IN_HEADER.pack_into(buf, 0, size, opcode, self.unique, nodeid, 0, 0, 1, 0, 0)
        buf[wire.IN_HEADER.size : size] = body
        assert not self.session._dispatch(memoryview(buf), size)
        head = os.read(self.replies, wire.OUT_HEADER.size)
        length, error, unique = wire.OUT_HEADER.unpack(head)
        assert unique == self.unique
        payload = os.read(self.replies, length - wire.OUT_HEADER.size) if length > 16 else b""
        assert len(payload) == length - wire.OUT_HEADER.size
        return error, payload


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Wire]:
    lower = write_tree(tmp_path / "lower", {"dir": None, **{f"dir/{n}": n for n in NAMES}})
    os.symlink("dir", lower / "link")
    stack = layerfs.Stack([str(lower)])
    session = Session(stack, tmp_path / "mnt", sort_mount_options(["lower_timeout=5.5"])[0])
    read_end, write_end = os.pipe()
    session.fd = write_end
    try:
        yield Wire(session, read_end)
    finally:
        session._pool.shutdown()
        os.close(read_end)
        os.close(write_end)
        stack.close()


def lookup(conn: Wire, parent: int, name: str) -> tuple[int, ...]:
    error, payload = conn.call(wire.Op.LOOKUP, parent, name.encode() + b"\0")
    assert error == 0
    return wire.ENTRY_OUT.unpack(payload)


def test_lookup_replies_with_the_object_s_attributes(conn: Wire, tmp_path: Path) -> None:
    fields = lookup(conn, wire.ROOT_ID, "dir")
    nodeid, generation, entry_s, attr_s, entry_ns, attr_ns = fields[:6]
    ino, size, blocks, atime, mtime, ctime, atimens, mtimens, ctimens = fields[6:15]
    mode, nlink, uid, gid, rdev, blksize, _ = fields[15:]
    host = os.lstat(tmp_path / "lower" / "dir")
    assert nodeid == ino and generation == 0
    assert (entry_s, entry_ns, attr_s, attr_ns) == (5, 500_000_000, 5, 500_000_000)
    assert (mode, nlink, uid, gid, rdev) == (host.st_mode, host.st_nlink, host.st_uid, 0, 0)
    assert (size, blocks, blksize) == (host.st_size, host.st_blocks, host.st_blksize)
    assert mtime * 1_000_000_000 + mtimens == host.st_mtime_ns
    assert atime * 10**9 + atimens == host.st_atime_ns
    assert ctime * 10**9 + ctimens == host.st_ctime_ns


def test_a_missing_name_is_a_negative_entry(conn: Wire) -> None:
    fields = lookup(conn, wire.ROOT_ID, "missing")
    assert fields[0] == 0 and fields[2] == 5 and fields[4] == 500_000_000
    assert set(fields[6:]) == {0}


def test_getattr_and_readlink(conn: Wire) -> None:
    nodeid = lookup(conn, wire.ROOT_ID, "link")[0]
    error, payload = conn.call(wire.Op.GETATTR, nodeid, wire.GETATTR_IN.pack(0, 0, 0))
    assert error == 0
    fields = wire.ATTR_OUT.unpack(payload)
    assert fields[:2] == (5, 500_000_000) and stat.S_ISLNK(fields[12]) and fields[3] == nodeid
    assert conn.call(wire.Op.READLINK, nodeid, b"") == (0, b"dir")


def test_an_unknown_opcode_gets_enosys(conn: Wire) -> None:
    assert conn.call(wire.Op.BMAP, wire.ROOT_ID, b"\0" * 16) == (-errno.ENOSYS, b"")


def test_an_error_from_the_stack_becomes_its_errno(conn: Wire) -> None:
    assert conn.call(wire.Op.GETATTR, 12345, wire.GETATTR_IN.pack(0, 0, 0))[0] == -errno.ESTALE


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("size", [200, 4096])
def test_listings_fill_each_reply_and_resume_at_its_offset(
    conn: Wire, plus: bool, size: int
) -> None:
    """Small replies hold one or two entries: every name comes once, padded to 8 bytes, and
    no reply is longer than the kernel asked for."""
    directory = lookup(conn, wire.ROOT_ID, "dir")[0]
    error, payload = conn.call(wire.Op.OPENDIR, directory, wire.OPEN_IN.pack(os.O_RDONLY, 0))
    assert error == 0
    fh, open_flags, _ = wire.OPEN_OUT.unpack(payload)
    assert open_flags & wire.FOPEN_CACHE_DIR
    opcode = wire.Op.READDIRPLUS if plus else wire.Op.READDIR
    seen: list[str] = []
    offset = 0
    while True:
        body = wire.READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
        error, payload = conn.call(opcode, directory, body)
        assert error == 0 and len(payload) <= size
        if not payload:
            break
        pos = 0
        while pos < len(payload):
            if plus:
                entry = wire.ENTRY_OUT.unpack_from(payload, pos)
                pos += wire.ENTRY_OUT.size
            ino, offset, namelen, kind = wire.DIRENT.unpack_from(payload, pos)
            start = pos + wire.DIRENT.size
            name = payload[start : start + namelen]
            pos = start + ((namelen + 7) & ~7)
            assert payload[start + namelen : pos] == b"\0" * (pos - start - namelen)
            assert kind == stat.S_IFREG >> 12
            if plus:
                assert entry[0] == ino == entry[6] and stat.S_ISREG(entry[15])
            seen.append(name.decode())
    assert seen == sorted(NAMES)
    assert conn.call(wire.Op.RELEASEDIR, directory, wire.RELEASE_IN.pack(fh, 0, 0, 0)) == (0, b"")
