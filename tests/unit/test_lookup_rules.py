"""One small test per lookup rule of the merged view, through the Stack API.

Lowers are built from declarative specs (:mod:`tests.property.layers`), top-most first. Rules
that need a 0/0 character device or a ``trusted.*`` xattr are marked ``root``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import layerfs
from layerfs import Stack
from tests.property import layers as L

RO_STACK_CALLS: dict[str, Callable[[Stack], object]] = {
    "open-write": lambda s: s.open("/d/f", os.O_WRONLY),
    "open-create": lambda s: s.open("/new", os.O_WRONLY | os.O_CREAT),
    "write_bytes": lambda s: s.write_bytes("/d/f", b"x"),
    "mkdir": lambda s: s.mkdir("/new"),
    "rmdir": lambda s: s.rmdir("/empty"),
    "unlink": lambda s: s.unlink("/d/f"),
    "rename": lambda s: s.rename("/d/f", "/d/g"),
    "rename-noreplace": lambda s: s.rename("/d/f", "/d/g", layerfs.RENAME_NOREPLACE),
    "symlink": lambda s: s.symlink("t", "/new"),
    "link": lambda s: s.link("/d/f", "/new"),
    "mknod": lambda s: s.mknod("/new", stat.S_IFIFO | 0o644),
    "chmod": lambda s: s.chmod("/d/f", 0o600),
    "chown": lambda s: s.chown("/d/f", 1, 1),
    "utimes": lambda s: s.utimes("/d/f", 0, 0),
    "truncate": lambda s: s.truncate("/d/f", 0),
    "setxattr": lambda s: s.setxattr("/d/f", "user.x", b"v"),
    "removexattr": lambda s: s.removexattr("/d/f", "user.x"),
}


def _stack(tmp_path: Path, layers: list[L.Layer], writable: bool = True) -> Stack:
    lowers = L.build_layers(tmp_path, layers)
    if not writable:
        return Stack(lowers)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return Stack(lowers, upper, work)


def _errno(call: Callable[[], object]) -> int | None:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.root
def test_chardev_whiteout_hides_the_name_below(tmp_path: Path) -> None:
    top: L.Layer = {"/f": L.Whiteout("chardev"), "/d": L.Whiteout("chardev")}
    bottom: L.Layer = {"/f": L.File(b"x"), "/d": L.Dir(), "/d/g": L.File(b"y"), "/keep": L.File()}
    with _stack(tmp_path, [top, bottom]) as s:
        assert s.listdir("/") == ["keep"]
        assert _errno(lambda: s.lstat("/f")) == errno.ENOENT
        assert _errno(lambda: s.lstat("/d/g")) == errno.ENOENT


def test_wh_file_whiteout_hides_the_name_below(tmp_path: Path) -> None:
    top: L.Layer = {"/f": L.Whiteout("whfile"), "/d": L.Dir(), "/d/g": L.Whiteout("whfile")}
    bottom: L.Layer = {"/f": L.File(b"x"), "/d": L.Dir(), "/d/g": L.File(), "/d/h": L.File()}
    with _stack(tmp_path, [top, bottom]) as s:
        assert s.listdir("/") == ["d"]
        assert s.listdir("/d") == ["h"]
        assert not s.exists("/f")


@pytest.mark.parametrize(
    "style",
    [pytest.param("trusted", marks=pytest.mark.root), "user", "marker"],
)
def test_opaque_directory_hides_lower_content(tmp_path: Path, style: L.OpaqueStyle) -> None:
    top: L.Layer = {"/d": L.Dir(opaque=style), "/d/new": L.File(b"n")}
    bottom: L.Layer = {"/d": L.Dir(), "/d/old": L.File(b"o"), "/other": L.File()}
    with _stack(tmp_path, [top, bottom]) as s:
        assert s.listdir("/d") == ["new"]
        assert _errno(lambda: s.lstat("/d/old")) == errno.ENOENT
        assert s.listdir("/") == ["d", "other"]


def test_opaque_in_a_middle_layer_stops_only_below_it(tmp_path: Path) -> None:
    layers: list[L.Layer] = [
        {"/d": L.Dir(), "/d/top": L.File()},
        {"/d": L.Dir(opaque="marker"), "/d/middle": L.File()},
        {"/d": L.Dir(), "/d/bottom": L.File()},
    ]
    with _stack(tmp_path, layers) as s:
        assert s.listdir("/d") == ["middle", "top"]


def test_non_directory_hides_a_lower_directory(tmp_path: Path) -> None:
    top: L.Layer = {"/d": L.File(b"file wins")}
    bottom: L.Layer = {"/d": L.Dir(), "/d/inner": L.File()}
    with _stack(tmp_path, [top, bottom]) as s:
        assert stat.S_ISREG(s.lstat("/d").mode)
        assert s.read_bytes("/d") == b"file wins"
        assert _errno(lambda: s.lstat("/d/inner")) == errno.ENOTDIR


def test_directory_over_a_file_wins(tmp_path: Path) -> None:
    top: L.Layer = {"/d": L.Dir(mode=0o700), "/d/inner": L.File(b"i")}
    bottom: L.Layer = {"/d": L.File(b"hidden")}
    with _stack(tmp_path, [top, bottom]) as s:
        st = s.lstat("/d")
        assert stat.S_ISDIR(st.mode) and stat.S_IMODE(st.mode) == 0o700
        assert s.listdir("/d") == ["inner"]


def test_three_layers_merge_and_the_top_most_wins(tmp_path: Path) -> None:
    layers: list[L.Layer] = [
        {"/d": L.Dir(mode=0o750), "/d/a": L.File(b"top"), "/t": L.File()},
        {"/d": L.Dir(), "/d/a": L.File(b"middle"), "/d/b": L.File(b"middle")},
        {"/d": L.Dir(), "/d/c": L.File(b"bottom"), "/d/sub": L.Dir(), "/d/sub/x": L.File()},
    ]
    with _stack(tmp_path, layers) as s:
        assert s.listdir("/") == ["d", "t"]
        assert s.listdir("/d") == ["a", "b", "c", "sub"]
        assert s.read_bytes("/d/a") == b"top"
        assert s.read_bytes("/d/c") == b"bottom"
        assert stat.S_IMODE(s.lstat("/d").mode) == 0o750
        assert s.lstat("/d").nlink == 1  # a merged directory, as the kernel reports it
        assert s.listdir("/d/sub") == ["x"]


@pytest.mark.root
def test_private_xattrs_are_hidden(tmp_path: Path) -> None:
    layer: L.Layer = {
        "/d": L.Dir(opaque="trusted", xattrs=(("user.x", b"1"),)),
        "/f": L.File(xattrs=(("user.y", b"2"),)),
    }
    lowers = L.build_layers(tmp_path, [layer])
    os.setxattr(lowers[0] / "f", "trusted.overlay.origin", b"junk")
    os.setxattr(lowers[0] / "f", "user.overlay.metacopy", b"")
    with Stack(lowers) as s:
        assert s.listxattr("/d") == ["user.x"]
        assert s.listxattr("/f") == ["user.y"]
        # the kernel answers EOPNOTSUPP for its own namespace; layerfs hides both the same way
        assert _errno(lambda: s.getxattr("/d", "trusted.overlay.opaque")) == errno.EOPNOTSUPP
        assert _errno(lambda: s.getxattr("/f", "user.overlay.metacopy")) == errno.EOPNOTSUPP


@pytest.mark.root
def test_whiteout_names_and_markers_are_never_listed(tmp_path: Path) -> None:
    top: L.Layer = {
        "/d": L.Dir(opaque="marker"),
        "/gone": L.Whiteout("whfile"),
        "/dev0": L.Whiteout(),
    }
    with _stack(tmp_path, [top, {"/x": L.File()}]) as s:
        assert s.listdir("/") == ["d", "x"]
        assert s.listdir("/d") == []
        assert [e.name for e in s.scandir("/")] == ["d", "x"]
        s.unlink("/x")
        assert s.listdir("/") == ["d"]
        assert not s.exists("/.wh.x")


def test_a_whiteout_in_an_empty_layer_hides_nothing_else(tmp_path: Path) -> None:
    top: L.Layer = {"/nothing": L.Whiteout("whfile")}
    bottom: L.Layer = {"/nothing2": L.File(b"kept")}
    with _stack(tmp_path, [top, bottom]) as s:
        assert s.listdir("/") == ["nothing2"]


@pytest.mark.parametrize("call", sorted(RO_STACK_CALLS))
def test_read_only_stack_refuses_every_change(tmp_path: Path, call: str) -> None:
    layer: L.Layer = {
        "/d": L.Dir(),
        "/d/f": L.File(b"x", xattrs=(("user.x", b"1"),)),
        "/empty": L.Dir(),
    }
    with _stack(tmp_path, [layer], writable=False) as s:
        assert s.readonly
        assert _errno(lambda: RO_STACK_CALLS[call](s)) == errno.EROFS
        assert s.read_bytes("/d/f") == b"x"


def test_directories_seen_in_a_listing_hold_no_layer_descriptors(tmp_path: Path) -> None:
    """Looking at merged directories (a readdirplus of their parent) must not keep one host
    descriptor per layer for each of them: only entering a directory opens its layers."""
    lowers = []
    for i in range(4):
        layer = tmp_path / f"l{i}"
        for d in range(60):
            (layer / f"d{d}").mkdir(parents=True)
        lowers.append(str(layer))
    with Stack(lowers) as stack:
        names = stack.listdir_node(stack.root)
        before = len(os.listdir("/proc/self/fd"))
        assert all(stack.lookup_attr(stack.root, name)[0].is_dir for name in names)
        assert len(os.listdir("/proc/self/fd")) - before < 10
        child = stack.lookup(stack.root, "d0")
        stack.listdir_node(child)  # entering one opens its four layers
        assert len(child.dirs) == 4
