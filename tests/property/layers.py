"""Declarative lower layers: a dataclass per entry, a hypothesis strategy, and a disk builder.

A layer is a ``dict`` from in-layer path (``"/a/f"``) to one entry. Parents are implied (the
builder creates them as plain directories when a spec omits them, but the strategy always lists
them). A :class:`Whiteout` is keyed by the name it hides; the builder writes it either as the
kernel's 0/0 character device or as an OCI ``.wh.NAME`` file. The same spec feeds the reference
model (:func:`tests.property.model.flatten`), layerfs and kernel overlayfs, so the three always
start from identical lowers.

Names come in three classes so that generated operations never walk through a symlink or open
a fifo: ``DIR_NAMES`` may become directories or files, ``FILE_NAMES`` only files, and
``SPECIAL_NAMES`` only symlinks and fifos (never a parent, never opened).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from hypothesis import strategies as st

from layerfs import whiteout
from tests import forms

OLD_NS = 1_500_000_000 * 10**9  # mtime of every lower object: older than any test run
DIR_NAMES = ("a", "b", "c")
FILE_NAMES = ("f", "g")
SPECIAL_NAMES = ("s", "p")
XATTR_NAMES = ("user.x", "user.y")
DATA_CHOICES = (b"", b"x", b"hello\n", b"lower data\n", bytes(range(256)) * 20)
# set-uid, set-gid (with and without group execute) and sticky bits, and objects of other
# users, so callers that are not root meet the kernel's rules for them
FILE_MODES = (0o644, 0o600, 0o755, 0o640, 0o666, 0o4755, 0o2755, 0o2664, 0o6775)
DIR_MODES = (0o755, 0o700, 0o750, 0o777, 0o2775, 0o1777, 0o3777)
OWNERS = ((0, 0), (1000, 1000), (1000, 0), (1001, 1001), (1001, 1002), (0, 1000))

OpaqueStyle = Literal["trusted", "user", "marker"]
WhiteoutStyle = Literal["chardev", "whfile"]


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    opaque: OpaqueStyle | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    link: str | None = None  # another path of the same layer this one is a hard link of


@dataclass(frozen=True)
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Whiteout:
    style: WhiteoutStyle = "chardev"


Entry: TypeAlias = Dir | File | Symlink | Fifo | Whiteout
Layer: TypeAlias = dict[str, Entry]


@dataclass(frozen=True)
class Styles:
    """Which encodings a generated stack may use (the kernel reads only its own)."""

    whiteouts: tuple[WhiteoutStyle, ...] = ("chardev", "whfile")
    opaque: tuple[OpaqueStyle, ...] = ("trusted", "user", "marker")


# What kernel overlayfs reads, in the xattr namespace of this run's forms (see tests.forms).
KERNEL_STYLES = Styles(whiteouts=("chardev",), opaque=(forms.OPAQUE_STYLE,))
ALL_STYLES = Styles()


def join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


def name_class(name: str) -> str:
    """``dir``, ``file`` or ``special``: what a generated name may hold (see module doc)."""
    if name in SPECIAL_NAMES:
        return "special"
    return "file" if name in FILE_NAMES else "dir"


# --- strategy -------------------------------------------------------------------------------


@dataclass
class _LayerDraw:
    draw: st.DrawFn
    styles: Styles
    max_depth: int
    entries: Layer = field(default_factory=dict)


def _xattrs(d: _LayerDraw) -> tuple[tuple[str, bytes], ...]:
    names = d.draw(st.lists(st.sampled_from(XATTR_NAMES), unique=True, max_size=1))
    return tuple((n, b"v-" + n.encode()) for n in names)


def _entry_for(d: _LayerDraw, name: str, depth: int) -> Entry:
    cls = name_class(name)
    if cls == "special":
        kinds = ["symlink", "fifo", "whiteout"]
    elif cls == "file" or depth >= d.max_depth:
        kinds = ["file", "file", "whiteout"]
    else:
        kinds = ["dir", "dir", "file", "whiteout"]
    kind = d.draw(st.sampled_from(kinds))
    uid: int
    gid: int
    uid, gid = d.draw(st.sampled_from(OWNERS))
    if kind == "dir":
        opaque: OpaqueStyle | None = d.draw(st.sampled_from((None, None, None, *d.styles.opaque)))
        mode = d.draw(st.sampled_from(DIR_MODES))
        return Dir(mode, uid, gid, opaque, _xattrs(d))
    if kind == "file":
        data = d.draw(st.sampled_from(DATA_CHOICES))
        mode = d.draw(st.sampled_from(FILE_MODES))
        return File(data, mode, uid, gid, _xattrs(d))
    if kind == "symlink":
        target = d.draw(st.sampled_from(("f", "../g", "/nonexistent/target", "a/b")))
        return Symlink(target, uid, gid)
    if kind == "fifo":
        return Fifo(d.draw(st.sampled_from(FILE_MODES)), uid, gid)
    return Whiteout(d.draw(st.sampled_from(d.styles.whiteouts)))


def _fill(d: _LayerDraw, dirpath: str, depth: int) -> None:
    pool = DIR_NAMES + FILE_NAMES + SPECIAL_NAMES
    names = d.draw(st.lists(st.sampled_from(pool), unique=True, max_size=4))
    for name in sorted(names):
        path = join(dirpath, name)
        entry = _entry_for(d, name, depth)
        d.entries[path] = entry
        if isinstance(entry, Dir):
            _fill(d, path, depth + 1)


def _add_hard_link(d: _LayerDraw) -> None:
    """Turn a second regular file of the layer into a hard link of a first one."""
    files = [p for p, e in d.entries.items() if isinstance(e, File)]
    if len(files) < 2:
        return
    first = d.draw(st.sampled_from(files))
    second = d.draw(st.sampled_from([p for p in files if p != first]))
    d.entries[second] = File(link=first)


@st.composite
def layer_stacks(
    draw: st.DrawFn,
    styles: Styles = ALL_STYLES,
    min_layers: int = 2,
    max_layers: int = 3,
    hard_links: bool = True,
) -> list[Layer]:
    """2-3 lower layers, top-most first, with whiteouts, opaque dirs and (unless
    *hard_links* is false) a hard link pair."""
    count = draw(st.integers(min_layers, max_layers))
    layers: list[Layer] = []
    for index in range(count):
        d = _LayerDraw(draw, styles, max_depth=2)
        _fill(d, "/", 1)
        if hard_links and (index == count - 1 or draw(st.booleans())):
            _add_hard_link(d)
        layers.append(d.entries)
    return layers


# --- building on disk -----------------------------------------------------------------------


def _set_xattrs(path: Path, xattrs: tuple[tuple[str, bytes], ...]) -> None:
    for name, value in xattrs:
        os.setxattr(path, name, value, follow_symlinks=False)


def _build_dir(host: Path, entry: Dir) -> None:
    host.mkdir()
    if entry.opaque == "trusted":
        os.setxattr(host, whiteout.TRUSTED_PREFIX + "opaque", whiteout.OPAQUE_VALUE)
    elif entry.opaque == "user":
        os.setxattr(host, whiteout.USER_PREFIX + "opaque", whiteout.OPAQUE_VALUE)
    elif entry.opaque == "marker":
        (host / whiteout.OPAQUE_MARKER).touch()
    _set_xattrs(host, entry.xattrs)
    os.chown(host, entry.uid, entry.gid)
    os.chmod(host, entry.mode)


def _build_leaf(root: Path, path: str, entry: Entry) -> None:
    host = root / path.lstrip("/")
    if isinstance(entry, Whiteout):
        if entry.style == "chardev":
            os.mknod(host, 0o600 | 0o020000, os.makedev(0, 0))
        else:
            (host.parent / whiteout.whiteout_file_name(host.name)).touch()
        return
    if isinstance(entry, File) and entry.link is not None:
        os.link(root / entry.link.lstrip("/"), host)
        return
    if isinstance(entry, File):
        host.write_bytes(entry.data)
        _set_xattrs(host, entry.xattrs)
    elif isinstance(entry, Symlink):
        os.symlink(entry.target, host)
    elif isinstance(entry, Fifo):
        os.mkfifo(host, entry.mode)
    # owner first: a chown drops set-uid and set-gid bits that a chmod set before it
    os.chown(host, entry.uid, entry.gid, follow_symlinks=False)
    if not isinstance(entry, Symlink):
        os.chmod(host, entry.mode)
    os.utime(host, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def build_layer(root: Path, layer: Layer) -> None:
    """Write *layer* under the existing directory *root* (parents before children)."""
    for path in sorted(layer, key=lambda p: (p.count("/"), p)):
        entry = layer[path]
        if isinstance(entry, Dir):
            _build_dir(root / path.lstrip("/"), entry)
    links = []
    for path in sorted(layer):
        entry = layer[path]
        if isinstance(entry, File) and entry.link is not None:
            links.append(path)
        elif not isinstance(entry, Dir):
            _build_leaf(root, path, entry)
    for path in links:
        _build_leaf(root, path, layer[path])
    for path in sorted(layer, key=lambda p: -p.count("/")):
        if isinstance(layer[path], Dir):
            os.utime(root / path.lstrip("/"), ns=(OLD_NS, OLD_NS))


def build_layers(base: Path, layers: list[Layer], prefix: str = "lower") -> list[Path]:
    """Build each layer in ``base/<prefix><i>``; returns the roots, top-most first."""
    roots = []
    for index, layer in enumerate(layers):
        root = base / f"{prefix}{index}"
        root.mkdir(parents=True)
        build_layer(root, layer)
        roots.append(root)
    return roots
