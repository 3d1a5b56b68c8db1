"""The measured operations. Each returns a count that the runner compares with the expected
one, so that a system which silently shows the wrong tree fails instead of looking fast.

Read workloads run against a mounted view and do not change it. Mutations run against a
fresh upper (or a fresh copy, for the plain directory) and change it. ``tar`` pipes GNU tar's
archive into ``cat > /dev/null``: given ``/dev/null`` as its archive (by name or as stdout),
GNU tar skips reading file data altogether.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks.config import RAND_BLOCK, SEQ_CHUNK, SMALL_FILE, Sizes
from benchmarks.layout import MUT_CREATE_DIR
from benchmarks.stacks import BuiltStack

TAR_TIMEOUT = 3600.0  # seconds


class WorkloadError(Exception):
    """A workload saw something other than the generated tree."""


@dataclass(frozen=True, slots=True)
class Workload:
    """One measured operation on one stack.

    ``kind`` is ``read`` (three cache states on a read-only mount), ``lookup`` (read, repeated
    for each depth of *deep*), ``mutate`` (fresh upper, host cache warm) or ``library``.
    ``run`` does the timed work and returns a count; ``expect`` gives the right count; ``check``
    (optional, untimed) verifies the effect of a mutation.
    """

    name: str
    stack: str
    kind: str
    summary: str
    run: Callable[[Path, BuiltStack, Sizes], int]
    expect: Callable[[BuiltStack, Sizes], int]
    check: Callable[[Path, BuiltStack, Sizes], None] | None = None


def stat_all(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """``lstat`` every directory and file of the merged tree by path."""
    for rel in stack.dirs:
        os.lstat(root / rel)
    for rel in stack.files:
        os.lstat(root / rel)
    return len(stack.dirs) + len(stack.files)


def walk(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Readdir every directory and stat every entry (``os.scandir`` recursion, like os.walk)."""
    return _walk(str(root))


def _walk(top: str) -> int:
    count = 0
    with os.scandir(top) as entries:
        subdirs = []
        for entry in entries:
            entry.stat(follow_symlinks=False)
            count += 1
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
    for sub in subdirs:
        count += _walk(sub)
    return count


def read_all(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Read every file to the end in 1 MiB reads; returns the bytes read."""
    total = 0
    buf = bytearray(SEQ_CHUNK)
    for rel in stack.files:
        with open(root / rel, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def tar_all(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """``tar -cf - . | cat > /dev/null`` in the tree: archives every byte; returns 1 on success.

    tar is killed if we are interrupted, so that it cannot keep the mount busy.
    """
    status, cat = tar_into(root, ["cat"], subprocess.DEVNULL)
    if status != 0 or cat != 0:
        raise WorkloadError(f"tar exited with {status}, cat with {cat}")
    return 1


def tar_into(tree: Path, consumer: list[str], out: int | IO[bytes]) -> tuple[int, int]:
    """Run ``tar -cf - . | CONSUMER > out`` in *tree*; return both exit statuses.

    tar is killed if we are interrupted, so that it cannot keep a mount busy.
    """
    tar = subprocess.Popen(["tar", "-cf", "-", "."], cwd=tree, stdout=subprocess.PIPE)
    try:
        assert tar.stdout is not None
        second = subprocess.run(consumer, stdin=tar.stdout, stdout=out, check=False)
        tar.stdout.close()
        status = tar.wait(timeout=TAR_TIMEOUT)
    finally:
        if tar.poll() is None:
            tar.kill()
            tar.wait()
    return status, second.returncode


def bigdir(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Readdir the 100,000-entry directory and stat each entry."""
    return _walk(str(root / stack.targets[0]))


def seq_read(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Read the big file sequentially in 1 MiB reads; returns the bytes read."""
    buf = bytearray(SEQ_CHUNK)
    total = 0
    with open(root / stack.targets[0], "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def rand_offsets(sizes: Sizes) -> list[int]:
    """The seeded, 4 KiB-aligned offsets of the random-read workload."""
    rng = random.Random(sizes.big_bytes)
    blocks = sizes.big_bytes // RAND_BLOCK
    return [rng.randrange(blocks) * RAND_BLOCK for _ in range(sizes.rand_reads)]


def rand_read(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """``pread`` 4 KiB at each seeded random offset of the big file; returns the reads done."""
    offsets = rand_offsets(sizes)
    fd = os.open(root / stack.targets[0], os.O_RDONLY)
    try:
        for offset in offsets:
            if len(os.pread(fd, RAND_BLOCK, offset)) != RAND_BLOCK:
                raise WorkloadError(f"short read at {offset}")
    finally:
        os.close(fd)
    return len(offsets)


def lookups(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """``lstat`` each bottom-layer file of *deep*; the cost per lookup is what gets reported."""
    for rel in stack.targets:
        os.lstat(root / rel)
    return len(stack.targets)


def create(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Create small files (100 bytes each) in a directory that exists in a lower layer."""
    data = b"x" * SMALL_FILE
    base = root / MUT_CREATE_DIR
    for i in range(sizes.create_files):
        fd = os.open(base / f"c{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return sizes.create_files


def append_byte(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Append one byte to the large lower file: a full copy-up on every overlay."""
    fd = os.open(root / stack.targets[0], os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"!")
    finally:
        os.close(fd)
    return 1


def check_append(root: Path, stack: BuiltStack, sizes: Sizes) -> None:
    size = os.lstat(root / stack.targets[0]).st_size
    if size != sizes.mut_big_bytes + 1:
        raise WorkloadError(f"size after append is {size}, not {sizes.mut_big_bytes + 1}")


def chmod(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Change the mode of the large lower file (a metadata-only copy-up where supported)."""
    os.chmod(root / stack.targets[0], 0o600)
    return 1


def check_chmod(root: Path, stack: BuiltStack, sizes: Sizes) -> None:
    st = os.lstat(root / stack.targets[0])
    if st.st_mode & 0o777 != 0o600 or st.st_size != sizes.mut_big_bytes:
        raise WorkloadError(f"after chmod: mode {st.st_mode:o}, size {st.st_size}")


def unlink(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Unlink small lower files (each leaves a whiteout in an overlay's upper)."""
    for rel in stack.targets[1:]:
        os.unlink(root / rel)
    return len(stack.targets) - 1


def check_gone(root: Path, stack: BuiltStack, sizes: Sizes) -> None:
    left = [rel for rel in stack.targets[1:] if os.path.lexists(root / rel)]
    if left:
        raise WorkloadError(f"{len(left)} files still visible, e.g. {left[0]}")


def rename(root: Path, stack: BuiltStack, sizes: Sizes) -> int:
    """Rename small lower files within their directory (copy-up plus a whiteout each)."""
    for rel in stack.targets[1:]:
        os.rename(root / rel, root / (rel + ".renamed"))
    return len(stack.targets) - 1


def check_renamed(root: Path, stack: BuiltStack, sizes: Sizes) -> None:
    check_gone(root, stack, sizes)
    missing = [r for r in stack.targets[1:] if not os.path.lexists(root / (r + ".renamed"))]
    if missing:
        raise WorkloadError(f"{len(missing)} renamed files missing, e.g. {missing[0]}")


def _entries(stack: BuiltStack, sizes: Sizes) -> int:
    return len(stack.dirs) + len(stack.files)


WORKLOADS: tuple[Workload, ...] = (
    Workload("stat", "wide", "read", "lstat every path", stat_all, _entries),
    Workload("walk", "wide", "read", "readdir + stat, whole tree", walk, _entries),
    Workload("read", "wide", "read", "read every file", read_all, lambda s, z: _bytes(s)),
    Workload("tar", "wide", "read", "tar -cf - . | cat >/dev/null", tar_all, lambda s, z: 1),
    Workload(
        "bigdir",
        "huge",
        "read",
        "readdir + stat, one huge dir",
        bigdir,
        lambda s, z: z.huge_entries,
    ),
    Workload(
        "seqread", "big", "read", "1 MiB sequential reads", seq_read, lambda s, z: z.big_bytes
    ),
    Workload(
        "randread", "big", "read", "4 KiB random preads", rand_read, lambda s, z: z.rand_reads
    ),
    Workload(
        "lookup",
        "deep",
        "lookup",
        "lstat bottom files per depth",
        lookups,
        lambda s, z: z.deep_files,
    ),
    Workload("create", "mut", "mutate", "create small files", create, lambda s, z: z.create_files),
    Workload(
        "append",
        "mut",
        "mutate",
        "1-byte append: copy-up",
        append_byte,
        lambda s, z: 1,
        check_append,
    ),
    Workload(
        "chmod",
        "mut",
        "mutate",
        "chmod of the large lower file",
        chmod,
        lambda s, z: 1,
        check_chmod,
    ),
    Workload(
        "unlink",
        "mut",
        "mutate",
        "unlink lower files",
        unlink,
        lambda s, z: z.mut_files,
        check_gone,
    ),
    Workload(
        "rename",
        "mut",
        "mutate",
        "rename lower files",
        rename,
        lambda s, z: z.mut_files,
        check_renamed,
    ),
)


def _bytes(stack: BuiltStack) -> int:
    return sum((stack.flat / rel).stat().st_size for rel in stack.files)
