"""Interop with umoci and skopeo, both ways, through the store root itself.

* umoci builds a multi-layer image (deleted files and directories, an opaque directory,
  modes, owners, symlinks, hard links); layerfs imports it, and a :class:`layerfs.Stack`
  over ``layer_dirs`` shows the same tree as ``umoci unpack``.
* layerfs commits a container (changed through a Stack, so the upper holds real overlayfs
  whiteouts and opaque xattrs); ``skopeo inspect``/``skopeo copy`` read the store as an OCI
  layout, and ``umoci unpack`` gives the same tree as the container's own view.

umoci 0.4.7 cannot read ``tar+zstd`` layers ("blob is not correct mediatype"): zstd commits
are checked through skopeo, which copies them (verbatim, and recompressed to gzip for umoci).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from layerfs import Stack
from layerfs.store.store import Store
from layerfs.tar import Compression
from tests.fuse.conftest import force_unmount, run_cli
from tests.treedesc import Tree, host_tree, stack_tree

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (shutil.which("umoci") and shutil.which("skopeo")), reason="needs umoci and skopeo"
    ),
]


def sh(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def _opaque_layer(path: Path) -> None:
    """A layer replacing /srv with an opaque directory and deleting /opt entirely."""
    with tarfile.open(path, "w") as tar:
        for name, kind, data in [
            ("srv", tarfile.DIRTYPE, b""),
            ("srv/.wh..wh..opq", tarfile.REGTYPE, b""),
            ("srv/fresh", tarfile.REGTYPE, b"replaced dir\n"),
            (".wh.opt", tarfile.REGTYPE, b""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tar.addfile(info, io.BytesIO(data) if data else None)


def build_umoci_image(work: Path) -> Path:
    """umoci init/new/unpack/repack (twice) + raw add-layer: returns the layout path."""
    layout = work / "layout"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:img")
    first = work / "b1"
    sh("umoci", "unpack", "--image", f"{layout}:img", first)
    root = first / "rootfs"
    for d in ("etc", "bin", "srv/old", "opt/tool", "home/user", "var/empty"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/shadow").write_text("secret\n")
    os.chmod(root / "etc/shadow", 0o600)
    (root / "bin/busybox").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    os.chmod(root / "bin/busybox", 0o4755)
    os.link(root / "bin/busybox", root / "bin/sh")
    os.symlink("busybox", root / "bin/ls")
    os.symlink("/etc/passwd", root / "etc/passwd.abs")
    os.symlink("nowhere", root / "etc/dangling")
    (root / "srv/old/data").write_text("old\n")
    (root / "opt/tool/run").write_text("#!/bin/sh\n")
    (root / "home/user/notes").write_text("mine\n")
    os.chown(root / "home/user", 1000, 1000)
    os.chown(root / "home/user/notes", 1000, 100)
    os.chmod(root / "var/empty", 0o1777)
    (root / "etc/gone").write_text("to be deleted\n")
    sh("umoci", "repack", "--image", f"{layout}:img", first)

    second = work / "b2"
    sh("umoci", "unpack", "--image", f"{layout}:img", second)
    root = second / "rootfs"
    (root / "etc/gone").unlink()
    shutil.rmtree(root / "home/user")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/ash\n")
    os.chmod(root / "etc/passwd", 0o640)
    os.chown(root / "etc/passwd", 0, 42)
    (root / "bin/ls").unlink()
    os.symlink("/bin/busybox", root / "bin/ls")
    (root / "etc/new").write_text("added in layer 2\n")
    os.link(root / "etc/new", root / "etc/new.hard")
    sh("umoci", "repack", "--image", f"{layout}:img", second)

    _opaque_layer(work / "opaque.tar")
    sh("umoci", "raw", "add-layer", "--image", f"{layout}:img", work / "opaque.tar")
    return layout


def umoci_tree(layout_ref: str, dest: Path) -> Tree:
    sh("umoci", "unpack", "--image", layout_ref, dest)
    return host_tree(dest / "rootfs")


def test_umoci_image_imported_and_stacked(tmp_path: Path) -> None:
    layout = build_umoci_image(tmp_path)
    expected = umoci_tree(f"{layout}:img", tmp_path / "ref")
    assert "/srv/fresh" in expected and "/srv/old" not in expected and "/opt" not in expected
    assert "/home/user" not in expected and "/etc/gone" not in expected

    store = Store.open(tmp_path / "store")
    (image,) = store.import_path(layout, "img")
    assert image.names == ("img:latest",)
    assert len(image.layers) == 3
    with Stack(store.layer_dirs(image)) as stack:
        assert stack_tree(stack) == expected

    store.unpack("img", tmp_path / "flat")
    assert host_tree(tmp_path / "flat") == expected

    # and through a real FUSE mount of the image by name
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_cli("mount", "--root", str(store.root), "img", str(mnt))
    try:
        assert host_tree(mnt) == expected
    finally:
        if run_cli("umount", str(mnt), check=False).returncode != 0:
            force_unmount(mnt)


def _change_through_stack(stack: Stack) -> None:
    stack.write_bytes("/etc/motd", b"committed by layerfs\n")
    stack.chown("/etc/motd", 1234, 5678)
    stack.chmod("/etc/motd", 0o600)
    stack.unlink("/etc/passwd.abs")  # whiteout over a lower symlink
    stack.unlink("/srv/fresh")
    stack.rmdir("/srv")  # a lower directory deleted ...
    stack.mkdir("/srv", 0o750)  # ... and made again: opaque
    stack.write_bytes("/srv/again", b"opaque\n")
    stack.symlink("../srv/again", "/etc/again")
    stack.link("/etc/motd", "/etc/motd.hard")
    stack.chmod("/bin/busybox", 0o755)  # metadata-only change of a lower file
    with stack.open("/etc/new", os.O_WRONLY | os.O_APPEND) as fh:
        fh.write(b"appended\n")


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_layerfs_commit_read_by_skopeo_and_umoci(tmp_path: Path, compression: Compression) -> None:
    layout = build_umoci_image(tmp_path)
    store = Store.open(tmp_path / "store")
    store.import_path(layout, "base:1")
    box = store.create_container("base:1", name="box")
    lowers, upper, work = store.mount_spec("box")
    with Stack(lowers, upper, work) as stack:
        _change_through_stack(stack)
        container_view = stack_tree(stack)
    image = store.commit("box", "mine:1", compression=compression, message="interop")

    # The store root is an OCI layout skopeo reads in place.
    info = json.loads(sh("skopeo", "inspect", f"oci:{store.root}:mine:1"))
    assert info["Digest"] == image.digest
    assert info["Layers"] == [d.digest for d in image.layers]
    raw = json.loads(sh("skopeo", "inspect", "--raw", f"oci:{store.root}:mine:1"))
    assert raw["layers"][-1]["mediaType"].endswith(
        "gzip" if compression is Compression.GZIP else "zstd"
    )

    # Our own reading of the committed image agrees with the container's view.
    with Stack(store.layer_dirs(image)) as stack:
        assert stack_tree(stack) == container_view
    assert box.upper.is_dir()

    store.export("mine:1", tmp_path / "mine.tar", format="docker-archive")
    # skopeo finds the image by its RepoTags entry and reads the uncompressed layers.
    archived = json.loads(sh("skopeo", "inspect", f"docker-archive:{tmp_path / 'mine.tar'}:mine:1"))
    assert archived["Layers"] == image.diff_ids

    sh("skopeo", "copy", f"oci:{store.root}:mine:1", f"oci:{tmp_path / 'copy'}:mine")
    copied = json.loads(sh("skopeo", "inspect", "--raw", f"oci:{tmp_path / 'copy'}:mine"))
    assert [layer["digest"] for layer in copied["layers"]] == [d.digest for d in image.layers]

    if compression is Compression.GZIP:
        assert umoci_tree(f"{store.root}:mine:1", tmp_path / "u1") == container_view
    else:
        # umoci cannot read zstd; let skopeo decode our zstd layers and re-encode them.
        sh(
            "skopeo", "copy", "--dest-compress", "--dest-compress-format", "gzip",
            f"oci:{store.root}:mine:1", f"oci:{tmp_path / 'gz'}:mine",
        )  # fmt: skip
        assert umoci_tree(f"{tmp_path / 'gz'}:mine", tmp_path / "u2") == container_view
