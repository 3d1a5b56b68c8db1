"""File I/O through the mount beside kernel overlayfs: copy-up under an open file, setuid
clearing by an unprivileged writer, and how much page cache two mounts of one image take."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerfs import hostfs
from tests.fuse.conftest import CAP_NET_RAW_EP, CAPABILITY, Mounter, Stackdirs, write_tree

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.kernel, pytest.mark.timeout(120)]

MIB = 1 << 20


@contextlib.contextmanager
def kernel_overlay(
    base: Path,
    files: dict[str, str | bytes | None],
    extra: str = "",
    prepare: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Kernel overlayfs over one lower made of *files* (then given to *prepare*), with its
    defaults plus *extra* options (allow_other needs nothing there: the kernel checks
    permissions as for any filesystem). The upper is ``base/ku``."""
    lower, upper, work, mnt = (write_tree(base / n, {}) for n in ("kl", "ku", "kw", "km"))
    write_tree(lower, files)
    if prepare is not None:
        prepare(lower)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}" + (f",{extra}" if extra else "")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def reads_around_copy_up(mnt: Path) -> dict[str, bytes]:
    """Open read-only and map, then copy the file up by writing through a second open."""
    path = mnt / "f"
    fd1 = os.open(path, os.O_RDONLY)
    try:
        before = mmap.mmap(fd1, 10, prot=mmap.PROT_READ)
        fd2 = os.open(path, os.O_WRONLY)
        os.pwrite(fd2, b"UPPER-DATA", 0)
        os.close(fd2)
        after = mmap.mmap(fd1, 10, prot=mmap.PROT_READ)
        fd3 = os.open(path, os.O_RDONLY)
        seen = {
            "read(old fd)": os.pread(fd1, 10, 0),
            "mmap before": before[:],
            "mmap after, old fd": after[:],
            "read(new fd)": os.pread(fd3, 10, 0),
        }
        os.close(fd3)
        before.close()
        after.close()
        return seen
    finally:
        os.close(fd1)


def test_reading_a_file_that_is_copied_up_while_open(
    mounter: Mounter, tmp_path: Path, fuse_backend: str
) -> None:
    """Kernel overlayfs: read(2) on a descriptor opened before the copy-up sees the upper
    data, a mapping keeps the lower data (also one made after the copy-up through the old
    descriptor). With passthrough (the native backend as root) the old descriptor keeps
    reading the lower file: a difference listed in docs/semantics.md. The open for writing
    succeeds although the lower file is still open for passthrough (a new kernel inode)."""
    files: dict[str, str | bytes | None] = {"f": "lower-data"}
    with kernel_overlay(tmp_path / "k", files) as kmnt:
        kernel = reads_around_copy_up(kmnt)
    assert kernel == {
        "read(old fd)": b"UPPER-DATA",
        "mmap before": b"lower-data",
        "mmap after, old fd": b"lower-data",
        "read(new fd)": b"UPPER-DATA",
    }
    mnt = mounter.mount(mounter.layers(files))
    seen = reads_around_copy_up(mnt)
    expected = dict(kernel)
    if fuse_backend == "native":
        expected["read(old fd)"] = b"lower-data"  # the passthrough file holds the lower file
    else:
        # one page cache per FUSE inode: the write went into it, so every view shows it
        expected.update({"mmap before": b"UPPER-DATA", "mmap after, old fd": b"UPPER-DATA"})
    assert seen == expected
    assert (mnt / "f").read_bytes() == b"UPPER-DATA"


def reopens_around_copy_up(mnt: Path) -> list[bytes]:
    """Read a lower file whole several times (each open closed before the next), also after
    the kernel dropped its inodes, then copy it up by writing, and read it again."""
    path = mnt / "f"
    seen = [path.read_bytes() for _ in range(3)]
    Path("/proc/sys/vm/drop_caches").write_text("2")  # inodes and dentries: forgets
    seen.append(path.read_bytes())
    with open(path, "r+b") as f:
        f.write(b"UPPER")
    seen += [path.read_bytes() for _ in range(2)]
    return seen


def test_opening_again_after_a_copy_up_reads_the_upper_file(
    mounter: Mounter, tmp_path: Path
) -> None:
    """With passthrough the backing file of a closed lower file stays registered for the
    next open; once the file is copied up a new open must pass through to the upper file,
    as kernel overlayfs reads it."""
    files: dict[str, str | bytes | None] = {"f": "lower-data"}
    with kernel_overlay(tmp_path / "k", files) as kmnt:
        kernel = reopens_around_copy_up(kmnt)
    assert kernel == [b"lower-data"] * 4 + [b"UPPER-data"] * 2
    assert reopens_around_copy_up(mounter.mount(mounter.layers(files))) == kernel


WRITER = """
import os, sys
d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.setgroups([]); os.setgid(4321); os.setuid(1234)
fd = os.open("prog", os.O_WRONLY, dir_fd=d)
os.pwrite(fd, b"#", 0)
os.close(fd)
"""


def setuid_after_unprivileged_write(mnt: Path, upper: Path | None = None) -> tuple[int, int]:
    """Mode bits of ``prog`` after a process without CAP_FSETID wrote to it."""
    os.chmod(mnt, 0o755)
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(mnt)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    mode = stat.S_IMODE(os.stat(mnt / "prog").st_mode)
    host = stat.S_IMODE(os.stat(upper / "prog").st_mode) if upper else mode
    return mode, host


def test_unprivileged_write_clears_setuid_and_setgid(mounter: Mounter, tmp_path: Path) -> None:
    """A write by a caller without CAP_FSETID clears S_ISUID and S_ISGID (group-executable),
    as on the kernel; with passthrough the write itself runs with the daemon's credentials,
    but the kernel removes the bits through a SETATTR before it passes the write on."""
    files: dict[str, str | bytes | None] = {"prog": "#!/bin/sh\n"}
    with kernel_overlay(tmp_path / "k", files) as kmnt:
        os.chmod(kmnt / "prog", 0o6777)
        kernel, _ = setuid_after_unprivileged_write(kmnt)
    assert kernel == 0o0777
    dirs: Stackdirs = mounter.layers(files)
    mnt = mounter.mount(dirs, "-o", "allow_other")
    os.chmod(mnt / "prog", 0o6777)
    assert setuid_after_unprivileged_write(mnt, dirs.upper) == (kernel, kernel)


CAPABLE = ("chmod", "open", "chown", "write")


def give_capabilities(lower: Path) -> None:
    for name in CAPABLE:
        os.setxattr(lower / name, CAPABILITY, CAP_NET_RAW_EP)


def capability_of(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, CAPABILITY, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        return None


def capabilities_after_changes(mnt: Path, upper: Path) -> dict[str, tuple[object, ...]]:
    """A copy-up keeps a file's capabilities (chmod, and an open for writing that completes
    a metacopy file), a chown and a write drop them: per file, what the mount and the upper
    show afterwards."""
    os.chmod(mnt / "chmod", 0o4755)
    os.close(os.open(mnt / "open", os.O_RDWR))
    os.chown(mnt / "chown", 0, 0)
    with open(mnt / "write", "r+b") as f:
        f.write(b"#")
    return {
        name: (
            capability_of(mnt / name),
            capability_of(upper / name),
            oct(os.lstat(mnt / name).st_mode),
        )
        for name in CAPABLE
    }


@pytest.mark.parametrize("metacopy", ["off", "on"])
def test_copy_up_keeps_file_capabilities(mounter: Mounter, tmp_path: Path, metacopy: str) -> None:
    """``ping``-style files carry ``security.capability``; the kernel drops it on every write
    and chown, so a copy-up that writes data or owners must put it back, as overlayfs does."""
    files: dict[str, str | bytes | None] = {name: "#!/bin/sh\n" for name in CAPABLE}
    option = f"metacopy={metacopy}"
    with kernel_overlay(tmp_path / "k", files, option, give_capabilities) as kmnt:
        kernel = capabilities_after_changes(kmnt, tmp_path / "k" / "ku")
    assert kernel["chmod"][:2] == (CAP_NET_RAW_EP, CAP_NET_RAW_EP)
    assert kernel["write"][:2] == (None, None)
    dirs: Stackdirs = mounter.layers(files)
    give_capabilities(dirs.lowers[0])
    mnt = mounter.mount(dirs, "-o", option)
    assert dirs.upper is not None
    assert capabilities_after_changes(mnt, dirs.upper) == kernel


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def fallocate_outcomes(mnt: Path) -> dict[str, object]:
    """Reserve a new file, punch and zero ranges of a written one, reserve past its end
    without changing its size, and extend a lower file (copied up by the open)."""
    seen: dict[str, object] = {}
    calls = {
        "reserve": ("new", 0, 0, 1 << 20),
        "punch": ("data", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192),
        "zero": ("data", FALLOC_FL_ZERO_RANGE, 0, 4096),
        "keep size": ("data", FALLOC_FL_KEEP_SIZE, 0, 2 << 20),
        "extend lower": ("lower", 0, 0, 100),
    }
    (mnt / "data").write_bytes(b"y\n" * 32768)
    for what, (name, mode, offset, length) in calls.items():
        fd = os.open(mnt / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            hostfs.fallocate(fd, mode, offset, length)
            seen[what] = "ok"
        except OSError as exc:
            seen[what] = errno.errorcode[exc.errno or 0]
        finally:
            os.close(fd)
    for name in ("new", "data", "lower"):
        content = (mnt / name).read_bytes()
        seen[name] = (len(content), hashlib.sha256(content).hexdigest())
    return seen


def test_fallocate_as_on_the_kernel(mounter: Mounter, tmp_path: Path, fuse_backend: str) -> None:
    """Databases reserve, punch and zero ranges with ``fallocate(2)``; the native backend
    serves it as kernel overlayfs does, pyfuse3 has no such request (deviation 16)."""
    files: dict[str, str | bytes | None] = {"lower": "x\n"}
    with kernel_overlay(tmp_path / "k", files) as kmnt:
        kernel = fallocate_outcomes(kmnt)
    assert all(kernel[what] == "ok" for what in ("reserve", "punch", "zero", "keep size"))
    seen = fallocate_outcomes(mounter.mount(mounter.layers(files)))
    if fuse_backend == "native":
        assert seen == kernel
    else:
        assert seen["reserve"] in ("ENOTSUP", "EOPNOTSUPP")  # one errno, two names


def cached_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1])
    raise AssertionError("no Cached: line in /proc/meminfo")


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_two_mounts_of_one_image_share_its_page_cache(
    mounter: Mounter, tmp_path: Path, fuse_backend: str
) -> None:
    """One 64 MiB lower file read through two mounts of the same layers: with passthrough the
    page cache holds it once (the lower file's pages); without, each FUSE inode holds its own
    copy besides the lower file's (three in all)."""
    size = 64 * MIB
    lower = write_tree(tmp_path / "image", {})
    (lower / "big").write_bytes(os.urandom(size))
    mounts = []
    for name in ("a", "b"):
        dirs = Stackdirs(base=tmp_path / name, lowers=[lower])
        dirs.upper, dirs.work = write_tree(dirs.base / "u", {}), write_tree(dirs.base / "w", {})
        dirs.mnt = write_tree(dirs.base / "m", {})
        mounts.append(mounter.mount(dirs))
    evict(lower / "big")
    before = cached_kib()
    for mnt in mounts:
        with open(mnt / "big", "rb") as f:
            while f.read(MIB):
                pass
    added = (cached_kib() - before) * 1024
    if fuse_backend == "native":
        assert added < 1.5 * size, f"{added / MIB:.0f} MiB of page cache for a 64 MiB file"
    else:
        assert added > 2.5 * size, f"{added / MIB:.0f} MiB of page cache for a 64 MiB file"


def tmpfile_errno(directory: Path) -> int:
    """0 if ``O_TMPFILE`` opens in *directory*, else the errno it fails with."""
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError as exc:
        return exc.errno
    return 0


def test_o_tmpfile_is_refused_where_the_kernel_opens_one(mounter: Mounter, tmp_path: Path) -> None:
    """Deliberate difference 13 of docs/semantics.md: the kernel opens an unnamed file in a
    merged directory; the mount refuses with EOPNOTSUPP, the answer programs fall back on."""
    files: dict[str, str | bytes | None] = {"d/f": "x"}
    with kernel_overlay(tmp_path / "k", files) as kmnt:
        assert tmpfile_errno(kmnt / "d") == 0
    assert tmpfile_errno(mounter.mount(mounter.layers(files)) / "d") == errno.EOPNOTSUPP
