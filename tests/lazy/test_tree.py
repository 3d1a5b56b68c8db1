"""Property: a TOC's tree holds what unpacking the same layer tar makes, object by object.

A random layer over a small name space mixes directories, files, symlinks, fifos, hard links,
whiteouts and opaque markers in any order, also on the same names and below one another, with
xattrs (overlayfs's own among them, which unpacking drops). Unpacked in LAYER mode (the
store's layer directory) and described as TOC entries (what a zstd:chunked or eStargz TOC
says of the same members) and built with :func:`build_tree`, both hold the same objects:
kinds, modes, owners, device numbers, link counts, times, xattrs, symlink targets, sizes,
which names are hard links of one another, and whiteouts and opaque directories in the same
form. A layer unpacking refuses is refused by the tree too.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from layerfs.errors import LayerFormatError
from layerfs.lazy.toc import EntryType, Toc, TocEntry, TocFormat
from layerfs.lazy.tree import LayerTree, TreeNode, build_tree
from layerfs.privilege import layer_format
from layerfs.tar import ApplyMode, ApplyOptions, apply_layer
from tests.property.profiles import oracle_settings
from tests.tar.tarbuild import M, build_tar, d, f, hard, sym

PATHS = ["a", "b", "a/x", "a/y", "a/x/z", "b/x"]
XATTRS = [{}, {"SCHILY.xattr.user.k": "v"}, {"SCHILY.xattr.trusted.overlay.opaque": "y"}]
ENTRY = st.one_of(
    st.builds(
        lambda p, mode, x: d(p, mode=mode, pax=x),
        st.sampled_from(PATHS),
        st.sampled_from([0o750, 0o755, 0o1777]),
        st.sampled_from(XATTRS),
    ),
    st.builds(
        lambda p, data, owner, x: f(p, data, uid=owner, gid=owner, pax=x),
        st.sampled_from(PATHS),
        st.sampled_from([b"", b"1", b"22"]),
        st.sampled_from([0, 1000]),
        st.sampled_from(XATTRS),
    ),
    st.builds(lambda p: sym(p, "a/x"), st.sampled_from(PATHS)),
    st.builds(lambda p: M(p, tarfile.FIFOTYPE), st.sampled_from(PATHS)),
    st.builds(hard, st.sampled_from(PATHS), st.sampled_from(PATHS)).filter(
        lambda m: m.name != m.linkname  # a TOC naming itself is refused before any tree
    ),
    st.builds(
        lambda p: f(f"{p.rpartition('/')[0]}/.wh.{p.rpartition('/')[2]}".lstrip("/")),
        st.sampled_from(PATHS),
    ),
    st.builds(lambda p: f(f"{p}/.wh..wh..opq"), st.sampled_from(["a", "b", "a/x"])),
    st.just(d("./", mode=0o700)),
)
_TYPES = {
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.REGTYPE: EntryType.REG,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


def toc_of(members: list[M]) -> Toc:
    """The TOC a TOC-writing tool gives for *members* (content left out: not compared)."""
    entries = []
    for m in members:
        path = "/" + "/".join(p for p in m.name.split("/") if p not in ("", "."))
        xattrs = {k.removeprefix("SCHILY.xattr."): v.encode() for k, v in m.pax.items()}
        entries.append(
            TocEntry(
                path=path,
                type=_TYPES[m.kind],
                mode=m.mode,
                uid=m.uid,
                gid=m.gid,
                size=len(m.data),
                mtime_ns=m.mtime * 1_000_000_000,
                link=m.linkname if m.kind == tarfile.SYMTYPE else "",
                hardlink="/" + m.linkname if m.kind == tarfile.LNKTYPE else "",
                xattrs=xattrs,
            )
        )
    by_path = {e.path: e for e in entries}
    return Toc(TocFormat.ZSTD_CHUNKED, 0, 0, tuple(entries), (), by_path)


def _item(mode: int, uid: int, gid: int, rdev: int, nlink: int, mtime: int | None,
          xattrs: dict[str, bytes], link: str, size: int) -> tuple[Any, ...]:  # fmt: skip
    shown_size = size if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else 0
    return (mode, uid, gid, rdev, nlink, mtime, sorted(xattrs.items()), link, shown_size)


def host_objects(root: Path, timed: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    links: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, *([] if dirpath != str(root) else ["."])]:
            path = os.path.normpath(os.path.join(dirpath, name))
            rel = "/" + os.path.relpath(path, root) if path != str(root) else "/"
            st = os.lstat(path)
            xattrs = {a: os.getxattr(path, a, follow_symlinks=False)
                      for a in os.listxattr(path, follow_symlinks=False)}  # fmt: skip
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            mtime = st.st_mtime_ns if rel in timed else None
            found[rel] = _item(st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_nlink,
                               mtime, xattrs, link, st.st_size)  # fmt: skip
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                links.setdefault(st.st_ino, []).append(rel)
    found["hard links"] = sorted(sorted(g) for g in links.values())
    return found


def tree_objects(tree: LayerTree, timed: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    links: dict[int, list[str]] = {}

    def walk(node: TreeNode, path: str) -> None:
        mtime = node.mtime_ns if path in timed else None
        found[path] = _item(node.mode, node.uid, node.gid, node.rdev, node.nlink, mtime,
                            node.xattrs, node.link, node.size)  # fmt: skip
        if node.children is None:
            if node.nlink > 1:
                links.setdefault(node.ino, []).append(path)
            return
        for name, child in node.children.items():
            walk(child, f"{path.rstrip('/')}/{name}")

    walk(tree.root, "/")
    found["hard links"] = sorted(sorted(g) for g in links.values())
    return found


def timed_paths(members: list[M], unpacked: Path) -> set[str]:
    """Paths whose times come from the layer: objects with an entry (not whiteouts, not
    directories a later entry or a marker made), as unpacking sets them."""
    named = {"/" + "/".join(p for p in m.name.split("/") if p not in ("", ".")) for m in members}
    return {p for p in named if ".wh." not in p and os.path.lexists(unpacked / p.lstrip("/"))}


@pytest.mark.root  # whiteouts as 0/0 devices and trusted.overlay xattrs, as the store writes
@pytest.mark.timeout(300)
@oracle_settings(default=80, ci=300, deep=3000)
@given(st.lists(ENTRY, min_size=1, max_size=8))
def test_toc_tree_holds_what_unpacking_makes(members: list[M]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "layer.tar").write_bytes(build_tar(members))
        unpacked = base / "layer"
        try:
            apply_layer(base / "layer.tar", unpacked, options=ApplyOptions(mode=ApplyMode.LAYER))
        except LayerFormatError:
            event("refused by unpacking")
            with pytest.raises(LayerFormatError):
                build_tree(toc_of(members), layer_format())
            return
        event("unpacked")
        tree = build_tree(toc_of(members), layer_format())
        timed = timed_paths(members, unpacked)
        assert tree_objects(tree, timed) == host_objects(unpacked, timed)


def test_device_entries_are_left_out_without_root() -> None:
    """As unpacking leaves device nodes out for anyone but root of the host, so does the tree."""
    null = TocEntry(path="/dev/null", type=EntryType.CHAR, mode=0o666, devmajor=1, devminor=3)
    toc = Toc(TocFormat.ZSTD_CHUNKED, 0, 0, (null,), (), {null.path: null})
    dev = build_tree(toc, layer_format(), devices=False).root.children
    assert dev is not None and dev["dev"].children == {}
    kept = build_tree(toc, layer_format()).root.children
    assert kept is not None and kept["dev"].children is not None
    assert stat.S_ISCHR(kept["dev"].children["null"].mode)
