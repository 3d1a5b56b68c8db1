"""Every operation through a real mount, with plain ``os`` calls, checked in the mount and upper."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuse.conftest import Mounter, Stackdirs

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.timeout(120)]

LOWER_TOP = {"etc/conf": "top conf\n", "shared/a": "a from top\n", "only-top": "t"}
LOWER_BASE = {
    "etc/conf": "base conf\n",
    "etc/passwd": "root:x:0:0\n",
    "shared/b": "b from base\n",
    "big": b"x" * (3 << 20),
    "dir/sub/deep": "deep",
    "empty-dir": None,
}

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_OMIT = (1 << 30) - 2


class Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def set_mtime_only(path: Path, mtime_s: int) -> None:
    times = (Timespec * 2)(Timespec(0, UTIME_OMIT), Timespec(mtime_s, 0))
    if _libc.utimensat(AT_FDCWD, bytes(path), times, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


@pytest.fixture
def stack(mounter: Mounter) -> Stackdirs:
    dirs = mounter.layers(LOWER_TOP, LOWER_BASE)
    mounter.mount(dirs)
    return dirs


def mnt_of(dirs: Stackdirs) -> Path:
    assert dirs.mnt is not None
    return dirs.mnt


def upper_of(dirs: Stackdirs) -> Path:
    assert dirs.upper is not None
    return dirs.upper


def errno_of(fn: object) -> int:
    try:
        fn()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("expected an OSError")


def test_merged_view_and_attributes(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    assert sorted(os.listdir(mnt)) == ["big", "dir", "empty-dir", "etc", "only-top", "shared"]
    assert sorted(os.listdir(mnt / "shared")) == ["a", "b"]
    assert (mnt / "etc/conf").read_text() == "top conf\n"
    assert (mnt / "big").read_bytes() == LOWER_BASE["big"]
    host = os.lstat(stack.lowers[1] / "etc/passwd")
    st = os.lstat(mnt / "etc/passwd")
    assert (st.st_mode, st.st_size, st.st_uid, st.st_mtime_ns) == (
        host.st_mode, host.st_size, host.st_uid, host.st_mtime_ns,
    )  # fmt: skip
    assert errno_of(lambda: os.lstat(mnt / "nope")) == errno.ENOENT
    assert errno_of(lambda: os.listdir(mnt / "only-top")) == errno.ENOTDIR
    assert os.statvfs(mnt).f_bsize > 0


def test_write_paths_copy_up(stack: Stackdirs) -> None:
    mnt, upper = mnt_of(stack), upper_of(stack)
    with open(mnt / "etc/passwd", "a") as f:
        f.write("user:x:1000:1000\n")
    assert (mnt / "etc/passwd").read_text() == "root:x:0:0\nuser:x:1000:1000\n"
    assert (upper / "etc/passwd").read_text() == "root:x:0:0\nuser:x:1000:1000\n"
    assert (stack.lowers[1] / "etc/passwd").read_text() == "root:x:0:0\n"
    fd = os.open(mnt / "new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    try:
        assert os.pwrite(fd, b"hello world", 0) == 11
        assert os.pread(fd, 5, 6) == b"world"
        os.ftruncate(fd, 5)
        os.fsync(fd)
        assert os.fstat(fd).st_size == 5
    finally:
        os.close(fd)
    assert errno_of(lambda: os.open(mnt / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == (
        errno.EEXIST
    )
    assert stat.S_IMODE(os.stat(mnt / "new").st_mode) == 0o640
    os.truncate(mnt / "big", 10)
    assert (mnt / "big").read_bytes() == b"x" * 10
    with open(mnt / "shared/b", "r+b") as f:
        f.truncate(0)
    assert (mnt / "shared/b").read_bytes() == b""


def test_setattr(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    path = mnt / "etc/conf"
    os.chmod(path, 0o600)
    os.chown(path, 1234, 4321)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    st = os.lstat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 4321)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    set_mtime_only(path, 5)
    st = os.lstat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 5_000_000_000)
    os.utime(path)  # UTIME_NOW for both
    assert os.lstat(path).st_mtime > 5
    host = os.lstat(upper_of(stack) / "etc/conf")
    assert (stat.S_IMODE(host.st_mode), host.st_uid) == (0o600, 1234)


def test_namespace_operations(stack: Stackdirs) -> None:
    mnt, upper = mnt_of(stack), upper_of(stack)
    os.mkdir(mnt / "newdir", 0o750)
    assert stat.S_IMODE(os.stat(mnt / "newdir").st_mode) == 0o750
    assert errno_of(lambda: os.mkdir(mnt / "newdir")) == errno.EEXIST
    assert errno_of(lambda: os.rmdir(mnt / "dir")) == errno.ENOTEMPTY
    os.unlink(mnt / "dir/sub/deep")
    os.rmdir(mnt / "dir/sub")
    os.mkdir(mnt / "dir/sub")
    assert os.listdir(mnt / "dir/sub") == []  # the new directory hides the lower one
    os.unlink(mnt / "shared/b")
    assert os.listdir(mnt / "shared") == ["a"]
    assert stat.S_ISCHR(os.lstat(upper / "shared/b").st_mode)  # whiteout
    os.symlink("../etc/conf", mnt / "dir/link")
    assert os.readlink(mnt / "dir/link") == "../etc/conf"
    assert (mnt / "dir/link").read_text() == "top conf\n"
    os.mkfifo(mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    assert stat.S_ISFIFO(os.lstat(upper / "fifo").st_mode)
    os.rmdir(mnt / "empty-dir")
    assert "empty-dir" not in os.listdir(mnt)


def test_rename(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    os.rename(mnt / "only-top", mnt / "renamed")
    assert (mnt / "renamed").read_text() == "t"
    assert not (mnt / "only-top").exists()
    os.rename(mnt / "shared/a", mnt / "shared/b")  # replaces a lower file
    assert os.listdir(mnt / "shared") == ["b"]
    assert (mnt / "shared/b").read_text() == "a from top\n"
    os.rename(mnt / "dir", mnt / "dir2")  # a lower directory with content
    assert (mnt / "dir2/sub/deep").read_text() == "deep"
    assert not (mnt / "dir").exists()
    err = errno_of(lambda: renameat2(mnt / "renamed", mnt / "etc/conf", RENAME_NOREPLACE))
    assert err == errno.EEXIST
    renameat2(mnt / "renamed", mnt / "fresh", RENAME_NOREPLACE)
    renameat2(mnt / "fresh", mnt / "etc/passwd", RENAME_EXCHANGE)
    assert (mnt / "etc/passwd").read_text() == "t"
    assert (mnt / "fresh").read_text() == "root:x:0:0\n"


def test_hard_links(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    os.link(mnt / "etc/passwd", mnt / "passwd-link")
    a, b = os.lstat(mnt / "etc/passwd"), os.lstat(mnt / "passwd-link")
    assert a.st_ino == b.st_ino
    assert b.st_nlink == 2
    with open(mnt / "passwd-link", "a") as f:
        f.write("more\n")
    assert (mnt / "etc/passwd").read_text() == "root:x:0:0\nmore\n"
    os.unlink(mnt / "etc/passwd")
    assert os.lstat(mnt / "passwd-link").st_nlink == 1


def test_xattrs(stack: Stackdirs) -> None:
    mnt, upper = mnt_of(stack), upper_of(stack)
    path = mnt / "etc/passwd"
    assert errno_of(lambda: os.getxattr(path, "user.k")) == errno.ENODATA
    os.setxattr(path, "user.k", b"v1")
    assert os.getxattr(path, "user.k") == b"v1"
    assert "user.k" in os.listxattr(path)
    assert os.getxattr(upper / "etc/passwd", "user.k") == b"v1"
    os.removexattr(path, "user.k")
    assert "user.k" not in os.listxattr(path)
    assert errno_of(lambda: os.removexattr(path, "user.k")) == errno.ENODATA
    assert not any(name.startswith("trusted.overlay") for name in os.listxattr(mnt / "etc"))


def test_inode_numbers_stable_across_copy_up_and_unique(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    before = {p: os.lstat(p).st_ino for p in mnt.rglob("*")}
    assert len(set(before.values())) == len(before)
    with open(mnt / "dir/sub/deep", "a") as f:
        f.write("!")
    os.chmod(mnt / "etc", 0o700)
    after = {p: os.lstat(p).st_ino for p in mnt.rglob("*")}
    assert after == before


def test_unlink_while_open(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    lower_fd = os.open(mnt / "etc/passwd", os.O_RDONLY)
    upper_fd = os.open(mnt / "scratch", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(upper_fd, b"still here")
        os.unlink(mnt / "etc/passwd")
        os.unlink(mnt / "scratch")
        assert not (mnt / "scratch").exists()
        assert os.pread(lower_fd, 100, 0) == b"root:x:0:0\n"
        assert os.pread(upper_fd, 100, 0) == b"still here"
        os.pwrite(upper_fd, b"!", 10)
        assert os.fstat(upper_fd).st_size == 11
        assert os.pread(upper_fd, 100, 0) == b"still here!"
    finally:
        os.close(lower_fd)
        os.close(upper_fd)
    assert sorted(os.listdir(mnt / "etc")) == ["conf"]


def test_readdir_while_the_directory_changes(stack: Stackdirs) -> None:
    mnt = mnt_of(stack)
    big = mnt / "crowd"
    os.mkdir(big)
    names = [f"entry-with-a-longish-name-{i:05d}" for i in range(3000)]
    for name in names:
        (big / name).touch()
    seen: list[str] = []
    removed: set[str] = set()
    with os.scandir(big) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 100:
                for name in names[2000:2500]:
                    os.unlink(big / name)
                    removed.add(name)
                for n in range(500):
                    (big / f"added-{n:04d}").touch()
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    missing = set(names) - removed - set(seen)
    assert not missing, f"{len(missing)} untouched entries were skipped"


def test_created_objects_belong_to_the_caller(mounter: Mounter) -> None:
    stack = mounter.layers(LOWER_TOP, LOWER_BASE)
    mnt = mounter.mount(stack, "-o", "allow_other")  # other users may enter at all
    os.mkdir(mnt / "shared-dir", 0o777)
    os.chmod(mnt / "shared-dir", 0o777)
    code = (  # the test tree is private to root: walk into the mount before dropping rights
        "import os, sys\n"
        "d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.setgid(4321); os.setuid(1234)\n"
        "os.close(os.open('shared-dir/mine', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d))\n"
        "os.mkdir('shared-dir/mydir', dir_fd=d)\n"
        "try:\n"
        "    os.open('etc/conf', os.O_WRONLY | os.O_APPEND, dir_fd=d)\n"
        "except PermissionError:\n"
        "    print('denied')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(mnt)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "denied"  # the kernel checks permissions
    for name in ("mine", "mydir"):
        st = os.lstat(mnt / "shared-dir" / name)
        assert (st.st_uid, st.st_gid) == (1234, 4321)
        host = os.lstat(upper_of(stack) / "shared-dir" / name)
        assert (host.st_uid, host.st_gid) == (1234, 4321)
