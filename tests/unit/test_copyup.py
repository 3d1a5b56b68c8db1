"""Copy-up: atomicity under injected faults, metadata-only copies, hard links, inode numbers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs import Stack, StackOptions, copyup

STEPS = [
    "dir-created",
    "dir-before-rename",
    "file-created",
    "file-data-copied",
    "file-before-rename",
]


class Boom(Exception):
    pass


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    lower = tmp_path / "lower"
    (lower / "dir" / "sub").mkdir(parents=True)
    (lower / "dir" / "sub" / "file").write_bytes(b"lower data" * 1000)
    (lower / "dir" / "sub" / "file").chmod(0o640)
    (lower / "linked").write_bytes(b"shared")
    os.link(lower / "linked", lower / "dir" / "alias")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return {"lower": lower, "upper": upper, "work": work}


@pytest.fixture
def stack(dirs: dict[str, Path]) -> Iterator[Stack]:
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as s:
        yield s


@pytest.fixture
def meta_stack(dirs: dict[str, Path]) -> Iterator[Stack]:
    """A stack with metadata-only copy-up on (the kernel's ``metacopy=on``)."""
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"], options=METACOPY) as s:
        yield s


METACOPY = StackOptions(metacopy=True)


def _holds_no_data(path: Path) -> bool:
    """Whether *path* is all hole (its xattrs may still take a block)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("step", STEPS)
def test_interrupted_copy_up_leaves_nothing_visible(
    dirs: dict[str, Path], stack: Stack, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fired: list[str] = []

    def hook(name: str) -> None:
        if name == step:
            fired.append(name)
            raise Boom(name)

    monkeypatch.setattr(copyup, "FAULT_HOOK", hook)
    before = stack.read_bytes("/dir/sub/file")
    with pytest.raises(Boom), stack.open("/dir/sub/file", os.O_WRONLY | os.O_APPEND) as fh:
        fh.write(b"!")
    assert fired == [step], "the fault point was never reached"
    assert stack.read_bytes("/dir/sub/file") == before  # nothing half-done shows
    # whatever finished is complete; nothing half-copied is visible, nothing left in work/
    content = stack.read_bytes("/dir/sub/file")
    assert content in (before, before + b"!")
    upper_file = dirs["upper"] / "dir" / "sub" / "file"
    if upper_file.exists():
        assert upper_file.read_bytes() in (before, before + b"!")
    assert _tree(dirs["work"] / "work") == []
    monkeypatch.setattr(copyup, "FAULT_HOOK", None)
    # a later attempt succeeds and a fresh stack over the same dirs agrees
    with stack.open("/dir/sub/file", os.O_WRONLY | os.O_APPEND) as fh:
        fh.write(b"?")
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as again:
        assert again.read_bytes("/dir/sub/file").endswith(b"?")
        assert again.lstat("/dir/sub/file").mode & 0o777 == 0o640


def test_interrupted_metacopy_completion_keeps_lower_data(
    dirs: dict[str, Path], meta_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = meta_stack
    stack.chmod("/dir/sub/file", 0o600)
    before = stack.read_bytes("/dir/sub/file")

    def hook(name: str) -> None:
        if name == "metacopy-data-copied":
            raise Boom(name)

    monkeypatch.setattr(copyup, "FAULT_HOOK", hook)
    with pytest.raises(Boom):
        stack.open("/dir/sub/file", os.O_RDWR)
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"], options=METACOPY) as again:
        assert again.read_bytes("/dir/sub/file") == before


def test_chmod_copies_metadata_only(dirs: dict[str, Path], meta_stack: Stack) -> None:
    stack = meta_stack
    ino = stack.lstat("/dir/sub/file").ino
    stack.chmod("/dir/sub/file", 0o600)
    upper_file = dirs["upper"] / "dir" / "sub" / "file"
    st = upper_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert _holds_no_data(upper_file), "metadata-only copy-up must not copy data"
    assert os.getxattr(upper_file, "trusted.overlay.metacopy") == b""
    assert stack.read_bytes("/dir/sub/file") == b"lower data" * 1000
    assert stack.lstat("/dir/sub/file").ino == ino
    assert stack.lstat("/dir/sub/file").blocks > 0
    with stack.open("/dir/sub/file", os.O_WRONLY | os.O_APPEND) as fh:
        fh.write(b"+")
    assert "trusted.overlay.metacopy" not in os.listxattr(upper_file)
    assert upper_file.read_bytes() == b"lower data" * 1000 + b"+"
    assert stack.lstat("/dir/sub/file").ino == ino


def test_metacopy_is_off_by_default(dirs: dict[str, Path], stack: Stack) -> None:
    stack.chmod("/dir/sub/file", 0o600)
    upper_file = dirs["upper"] / "dir" / "sub" / "file"
    assert "trusted.overlay.metacopy" not in os.listxattr(upper_file)
    assert (dirs["upper"] / "dir" / "sub" / "file").read_bytes() == b"lower data" * 1000


SPARSE_SIZE = 256 << 20
SPARSE_DATA = {8 << 20: b"first", (100 << 20) + 5: b"second"}  # offset -> bytes, then a hole


def _make_sparse(path: Path) -> None:
    with open(path, "wb") as f:
        for offset, data in SPARSE_DATA.items():
            f.seek(offset)
            f.write(data)
        f.truncate(SPARSE_SIZE)


def _assert_sparse_copy(upper_file: Path) -> None:
    """The copy reads as the lower did and keeps its holes (a few blocks, not 256 MiB)."""
    st = upper_file.stat()
    assert st.st_size == SPARSE_SIZE
    assert st.st_blocks * 512 < 1 << 20, st.st_blocks
    with open(upper_file, "rb") as f:
        for offset, data in SPARSE_DATA.items():
            f.seek(offset)
            assert f.read(len(data)) == data
        f.seek(SPARSE_SIZE - 4096)
        assert f.read() == bytes(4096)


@pytest.mark.parametrize("options", [StackOptions(), METACOPY], ids=["full", "metacopy"])
def test_copy_up_keeps_holes(dirs: dict[str, Path], options: StackOptions) -> None:
    """A sparse lower file (``/var/log/lastlog`` in many images) stays sparse in the upper, as
    with kernel overlayfs: a full copy-up, and the data of a metadata-only copy completed by an
    open for writing."""
    _make_sparse(dirs["lower"] / "sparse")
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"], options=options) as stack:
        stack.chmod("/sparse", 0o600)
        with stack.open("/sparse", os.O_WRONLY):
            pass
        _assert_sparse_copy(dirs["upper"] / "sparse")
        assert stack.read_bytes("/sparse")[8 << 20 : (8 << 20) + 5] == b"first"


def test_truncate_to_zero_copies_no_data(dirs: dict[str, Path], stack: Stack) -> None:
    stack.write_bytes("/dir/sub/file", b"new")
    assert (dirs["upper"] / "dir" / "sub" / "file").read_bytes() == b"new"
    assert stack.lstat("/dir/sub/file").mode & 0o777 == 0o640


def test_parents_copied_with_their_metadata(dirs: dict[str, Path], stack: Stack) -> None:
    os.chmod(dirs["lower"] / "dir" / "sub", 0o750)
    os.utime(dirs["lower"] / "dir" / "sub", ns=(1_000_000_000, 2_000_000_000))
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as s:
        s.chmod("/dir/sub/file", 0o600)  # copies sub up; adds no new entry to it
    st = (dirs["upper"] / "dir" / "sub").stat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime_ns == 2_000_000_000


def test_hard_links_stay_linked_after_copy_up(dirs: dict[str, Path], stack: Stack) -> None:
    a, b = stack.lstat("/linked"), stack.lstat("/dir/alias")
    assert a.ino == b.ino
    stack.write_bytes("/linked", b"changed")
    assert stack.read_bytes("/dir/alias") == b"changed"
    assert stack.lstat("/dir/alias").ino == a.ino
    up_a, up_b = (dirs["upper"] / "linked").stat(), (dirs["upper"] / "dir" / "alias").stat()
    assert up_a.st_ino == up_b.st_ino
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as again:
        assert again.read_bytes("/dir/alias") == b"changed"


def test_inode_numbers_stable_and_unique(dirs: dict[str, Path], stack: Stack) -> None:
    paths = ["/dir", "/dir/sub", "/dir/sub/file", "/linked"]
    before = {p: stack.lstat(p).ino for p in paths}
    stack.chown("/dir/sub/file", 1, 1)
    stack.write_bytes("/dir/new", b"n")
    after = {p: stack.lstat(p).ino for p in paths}
    assert before == after
    inos = [stack.lstat(p).ino for p in [*paths, "/dir/new", "/"]]
    assert len(set(inos)) == len(inos)


def test_read_handle_follows_copy_up(stack: Stack) -> None:
    reader = stack.open("/dir/sub/file")
    with stack.open("/dir/sub/file", os.O_WRONLY | os.O_TRUNC) as writer:
        writer.write(b"fresh")
    assert reader.read(100, 0) == b"fresh"
    reader.close()


def test_unlinked_open_file_stays_readable(stack: Stack) -> None:
    stack.write_bytes("/tmpfile", b"keep me")
    fh = stack.open("/tmpfile")
    stack.unlink("/tmpfile")
    assert not stack.exists("/tmpfile")
    assert fh.read(100, 0) == b"keep me"
    fh.close()


def test_unlinking_one_name_of_a_lower_hard_link(dirs: dict[str, Path], stack: Stack) -> None:
    """The other name reports the links still visible, as the kernel's does with index=on."""
    assert stack.lstat("/dir/alias").nlink == 2
    stack.unlink("/linked")
    assert stack.lstat("/dir/alias").nlink == 1
    assert stack.read_bytes("/dir/alias") == b"shared"
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as again:
        assert again.lstat("/dir/alias").nlink == 1
        assert not again.exists("/linked")


def test_renaming_over_one_name_of_a_lower_hard_link(dirs: dict[str, Path], stack: Stack) -> None:
    stack.write_bytes("/new", b"replacement")
    stack.rename("/new", "/dir/alias")
    assert stack.lstat("/linked").nlink == 1
    assert stack.read_bytes("/linked") == b"shared"
    assert stack.read_bytes("/dir/alias") == b"replacement"


def test_inode_numbers_survive_a_remount(dirs: dict[str, Path]) -> None:
    """Copied-up objects record their origin (the kernel's format) and keep their number."""
    paths = ["/dir", "/dir/sub", "/dir/sub/file", "/linked", "/dir/alias"]
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as first:
        before = {p: first.lstat(p).ino for p in paths}
        first.chmod("/dir/sub/file", 0o600)
        first.write_bytes("/linked", b"changed")
        first.rename("/dir/sub", "/moved")  # a copy of the whole directory, elsewhere
    origin = os.getxattr(dirs["upper"] / "moved" / "file", "trusted.overlay.origin")
    assert origin[:2] == b"\x00\xfb"
    assert os.getxattr(dirs["upper"] / "dir", "trusted.overlay.impure") == b"y"
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"]) as again:
        after = {p: again.lstat(p.replace("/dir/sub", "/moved")).ino for p in paths}
    assert after == before


def test_a_forgotten_metacopy_link_still_reads_its_lower_data(dirs: dict[str, Path]) -> None:
    """The names a metacopy copy-up linked into the upper keep pointing at the lower data,
    also once the node is dropped and looked up again (what a FUSE forget does)."""
    with Stack([dirs["lower"]], dirs["upper"], dirs["work"], options=METACOPY) as stack:
        node = stack.resolve("/linked")
        stack.chmod("/linked", 0o600)  # a metacopy copy-up, linking /dir/alias too
        stack.unlink("/linked")
        stack.forget(node)
        assert stack.read_bytes("/dir/alias") == b"shared"
