"""Partial layers as lower layers of a stack, before their blobs are local.

Images in both formats (skopeo's zstd:chunked, ctr-remote's eStargz) are pulled lazily from a
registry on 127.0.0.1. Each layer read through its TOC (:class:`TocLayer`) holds what the
store's unpacked directory of the same blob holds, object by object; a read-only stack over
the partial layers shows what ``umoci unpack`` shows; names and attributes need no fetch,
reading a file fetches a small part of the image; a file read whole is then served from a
host file (a descriptor the mount can pass through), and so is every file once background
completion has made the layer local; a layer without a TOC is fetched whole when a stack is
assembled over it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from layerfs import Stack
from layerfs.cli.group import cli
from layerfs.layer import HostLayer, Layer
from layerfs.lazy.completion import Completion
from layerfs.lazy.lower import TocLayer
from layerfs.lazy.remote import RegistryRemote
from layerfs.store import Image, Store
from layerfs.whiteout import is_whiteout_stat
from tests.treedesc import host_tree, stack_tree

from .conftest import Images

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.interop, pytest.mark.timeout(300)]

FORMS = ["zstd_chunked", "estargz"]


def lazy_pull(root: Path, ref: str, *extra: str) -> Image:
    result = CliRunner().invoke(
        cli, ["pull", "--lazy", "--insecure", "-q", "--root", str(root), *extra, ref]
    )
    assert result.exit_code == 0, result.output
    return Store.open(root).resolve(ref)


def open_store(root: Path, remote: RegistryRemote) -> Store:
    store = Store.open(root)
    store.remote = remote
    return store


def layer_objects(layer: Layer, toc_paths: set[str] | None = None) -> dict[str, Any]:
    """Every object of one layer read through the Layer protocol: attributes, xattrs, link
    targets and content. Times of directories (and whiteouts) the layer has no entry for
    are left out: unpacking makes those at the time it runs."""
    found: dict[str, Any] = {}
    links: dict[tuple[int, int], set[str]] = {}

    def walk(handle: Any, path: str) -> None:
        for name, kind in sorted(layer.entries(handle)):
            child = f"{path}/{name}"
            st = layer.lstat(handle, name)
            assert st is not None and stat.S_IFMT(st.st_mode) == kind, child
            timed = toc_paths is None or child in toc_paths
            if stat.S_ISDIR(st.st_mode) or is_whiteout_stat(st):
                timed = timed and not is_whiteout_stat(st)
            item: tuple[Any, ...] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_rdev,
                st.st_nlink,
                st.st_mtime_ns if timed else None,
                sorted((a, layer.getxattr(handle, name, a)) for a in layer.listxattr(handle, name)),
            )
            if stat.S_ISREG(st.st_mode):
                source = layer.open_file(handle, name)
                try:
                    data = source.pread(st.st_size + 1, 0)
                finally:
                    source.close()
                item += (st.st_size, hashlib.sha256(data).hexdigest())
                if st.st_nlink > 1:
                    links.setdefault((st.st_dev, st.st_ino), set()).add(child)
                    assert child in layer.hard_links(st)
            elif stat.S_ISLNK(st.st_mode):
                item += (layer.readlink(handle, name),)
            found[child] = item
            if stat.S_ISDIR(st.st_mode):
                sub = layer.open_dir(handle, name)
                try:
                    walk(sub, child)
                finally:
                    layer.close_dir(sub)

    root = layer.lstat(layer.root(), ".")
    assert root is not None
    found["/"] = (
        root.st_mode,
        root.st_uid,
        root.st_gid,
        root.st_nlink,
        layer.dir_listxattr(layer.root()),
    )
    walk(layer.root(), "")
    found["hard links"] = sorted(sorted(group) for group in links.values())
    return found


@pytest.mark.parametrize("form", FORMS)
def test_toc_layers_hold_what_unpacked_layers_hold(
    images: Images, tmp_path: Path, form: str
) -> None:
    ref = getattr(images, form)
    lazy_root, full_root = tmp_path / "lazy", tmp_path / "full"
    image = lazy_pull(lazy_root, ref)
    CliRunner().invoke(cli, ["pull", "--insecure", "-q", "--root", str(full_root), ref])
    full = Store.open(full_root)
    dirs = full.layer_dirs(full.resolve(ref))[::-1]  # bottom-most first, as image.layers
    with RegistryRemote() as remote:
        store = open_store(lazy_root, remote)
        sources = store.image_sources(image)[::-1]
        assert len(sources) == len(image.layers) == len(dirs)
        for source, directory, desc in zip(sources, dirs, image.layers, strict=True):
            assert not isinstance(source, Path), "a partial layer is named by its source"
            layer = source.open()
            host = HostLayer(directory)
            try:
                assert isinstance(layer, TocLayer)
                paths = {e.path for e in layer.reader.toc.entries}
                assert layer_objects(layer, paths) == layer_objects(host, paths), desc.digest
            finally:
                layer.close()
                host.close()


@pytest.mark.parametrize("form", FORMS)
def test_stack_over_partial_layers_shows_what_umoci_unpack_shows(
    images: Images, tmp_path: Path, form: str
) -> None:
    ref = getattr(images, form)
    root = tmp_path / "store"
    image = lazy_pull(root, ref)
    with RegistryRemote() as remote:
        store = open_store(root, remote)
        with Stack(store.image_sources(image)) as stack:
            listing = stack.listdir("/data")
            assert stack.lstat("/etc/motd").size == (images.rootfs / "etc/motd").stat().st_size
            assert remote.statistics().bytes == 0  # names and attributes come from the TOCs
            assert stack.read_bytes("/etc/motd") == (images.rootfs / "etc/motd").read_bytes()
            assert 0 < remote.statistics().bytes < image.size // 20
            assert stack_tree(stack) == host_tree(images.unpacked(form))
        assert listing == sorted(os.listdir(images.rootfs / "data"))
    assert store.lazy.read_order(image.layers[0].digest)[0] == "/etc/motd"


@pytest.mark.parametrize("form", FORMS)
def test_file_read_whole_is_then_a_host_file(images: Images, tmp_path: Path, form: str) -> None:
    ref = getattr(images, form)
    root = tmp_path / "store"
    image = lazy_pull(root, ref, "--no-prefetch")
    with RegistryRemote() as remote:
        store = open_store(root, remote)
        with Stack(store.image_sources(image)) as stack:
            for path in ("/etc/motd", "/data/big"):
                with stack.open(path) as first:
                    assert not first.has_fileno()
                    data = first.read(1 << 24, 0)
                with stack.open(path) as again:
                    assert again.has_fileno(), path  # the kernel can pass it through
                    assert again.read(1 << 24, 0) == data
                assert data == (images.rootfs / path.lstrip("/")).read_bytes()
            big = stack.lstat("/data/big").size
            fetched = remote.statistics().bytes
            assert fetched < big * 1.2 + 200_000


def test_completed_layer_serves_files_from_its_directory(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.zstd_chunked)
    with RegistryRemote() as remote:
        store = open_store(root, remote)
        with Stack(store.image_sources(image)) as stack:
            with stack.open("/data/small-4") as before:
                assert not before.has_fileno()
                completion = Completion(store, image, remote).start()
                assert completion.wait_done(120) and completion.statistics().error is None
                assert before.read(100, 0) == (images.rootfs / "data/small-4").read_bytes()
            with stack.open("/data/small-5") as after:
                assert after.has_fileno()  # from the unpacked layer directory
                assert after.read(100, 0) == (images.rootfs / "data/small-5").read_bytes()
        assert all(isinstance(s, Path) for s in store.image_sources(image))


def test_layer_without_toc_is_fetched_whole_when_stacked(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.gzip)
    with RegistryRemote() as remote:
        store = open_store(root, remote)
        assert store.local_bytes(image) == image.manifest.config.size
        sources = store.image_sources(image)
        assert all(isinstance(s, Path) for s in sources)
        assert store.local_bytes(image) == image.size
        with Stack(sources) as stack:
            assert stack_tree(stack) == host_tree(images.rootfs)
