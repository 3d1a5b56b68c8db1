"""Images from every builder in Debian, made here without network, mount as umoci unpacks them.

buildah (`from scratch`, `copy`, commits in OCI and docker formats), umoci (`repack`, including
a non-empty directory turned into a file, `insert --opaque`, `insert --whiteout`, `insert`),
skopeo conversions (gzip, zstd, zstd:chunked, uncompressed, docker-archive, oci-archive) and
stargz-snapshotter's ctr-remote (eStargz, zstd:chunked) build images
(:mod:`tests.interop.builders`). Each is imported into one store with ``layerfs import``,
mounted by name with ``layerfs mount`` and compared with ``umoci unpack`` of the same image
(the same ``diff_ids``; through a gzip copy where umoci cannot read zstd): type, mode, owner,
size, content, link target, device numbers and xattrs of every path, the root included, and
which names are hard links of each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerfs.store.store import Store
from tests.fuse.conftest import force_unmount, run_cli
from tests.interop import builders
from tests.interop.builders import Built
from tests.treedesc import Tree, host_tree

TOOLS = ("buildah", "umoci", "skopeo", "ctr-remote", "containerd")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
]

Build = Callable[[Path, dict[str, Built]], dict[str, Built]]
STAGES: list[tuple[str, Build]] = [
    ("buildah", lambda work, _: builders.build_buildah(work)),
    ("umoci", lambda work, _: builders.build_umoci(work)),
    ("skopeo", builders.build_skopeo),
    ("ctr-remote", builders.build_ctr_remote),
]
CASES = [
    "buildah-oci",
    "buildah-docker-archive",
    "umoci-repack",
    "umoci-insert",
    "skopeo-gzip",
    "skopeo-zstd",
    "skopeo-zstd-chunked",
    "skopeo-uncompressed",
    "skopeo-docker-archive",
    "skopeo-oci-archive",
    "ctr-remote-esgz",
    "ctr-remote-zstdchunked",
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every builder's images, made once for the module."""
    base = tmp_path_factory.mktemp("builders")
    built: dict[str, Built] = {}
    for stage, build in STAGES:
        (base / stage).mkdir()
        built.update(build(base / stage, built))
    assert sorted(built) == sorted(CASES)
    return built


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for all of them: conversions of one image share their layer directories."""
    return tmp_path_factory.mktemp("store")


@contextlib.contextmanager
def mounted(store: Path, name: str, mnt: Path) -> Iterator[Path]:
    mnt.mkdir()
    run_cli("mount", "--root", str(store), name, str(mnt))
    try:
        yield mnt
    finally:
        if run_cli("umount", str(mnt), check=False).returncode != 0:
            force_unmount(mnt)


def link_groups(root: Path) -> list[list[str]]:
    """The sets of names that share an inode (hard links), each sorted."""
    by_inode: dict[int, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            by_inode.setdefault(path.lstat().st_ino, []).append(str(path.relative_to(root)))
    return sorted(sorted(names) for names in by_inode.values() if len(names) > 1)


def _differences(expected: Tree, got: Tree, reference: str = "umoci") -> list[str]:
    return [
        f"{path}: {reference} {expected.get(path)} layerfs {got.get(path)}"
        for path in sorted(set(expected) | set(got))
        if expected.get(path) != got.get(path)
    ]


@pytest.mark.parametrize("case", CASES)
def test_image_mounts_as_umoci_unpacks_it(
    case: str, images: dict[str, Built], store_root: Path, tmp_path: Path
) -> None:
    built = images[case]
    name_arg = [built.name] if built.name else []
    out = run_cli("import", "--root", str(store_root), built.source, *name_arg).stdout
    assert out.split()[1] == built.named, out
    image = Store.open(store_root).resolve(built.named)
    assert image.diff_ids == builders.diff_ids(built.reference), "the reference is another image"

    builders.sh("umoci", "unpack", "--image", built.reference, tmp_path / "umoci")
    expected = host_tree(tmp_path / "umoci" / "rootfs")
    expected_links = link_groups(tmp_path / "umoci" / "rootfs")
    with mounted(store_root, built.named, tmp_path / "mnt") as mnt:
        got, links = host_tree(mnt), link_groups(mnt)
    assert not _differences(expected, got)
    assert links == expected_links and ["bin/hard", "bin/tool"] in links


@contextlib.contextmanager
def kernel_overlay(lowers: list[Path], mnt: Path) -> Iterator[Path]:
    """``mount -t overlay`` of *lowers* (top-most first), read-only, undone at the end."""
    mnt.mkdir()
    lowerdir = ":".join(str(p) for p in lowers)
    builders.sh("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", mnt)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.kernel
@pytest.mark.parametrize("case", CASES)
def test_kernel_overlay_reads_the_stores_layers_alike(
    case: str, images: dict[str, Built], store_root: Path, tmp_path: Path
) -> None:
    """The layer directories the store unpacked are overlayfs lowers as the kernel reads them:
    the same tree (root included) through `mount -t overlay` as through `layerfs mount`."""
    built = images[case]
    name_arg = [built.name] if built.name else []
    run_cli("import", "--root", str(store_root), built.source, *name_arg)
    store = Store.open(store_root)
    lowers = store.layer_dirs(store.resolve(built.named))
    assert len(lowers) >= 2  # a lowerdir-only overlay mount needs two
    with kernel_overlay(lowers, tmp_path / "kernel") as mnt:
        expected = host_tree(mnt, listed_whiteouts=True)
    with mounted(store_root, built.named, tmp_path / "mnt") as mnt:
        got = host_tree(mnt)
    assert not _differences(expected, got, "kernel")
