"""Lazily pulled images in the store: read through the TOC, shared chunks, restart, completion.

Images in both formats (skopeo's zstd:chunked, ctr-remote's eStargz) are pulled with
``layerfs pull --lazy``; files read through the layer reader equal ``umoci unpack``'s, only
what is read is fetched, a chunk another image already has is not fetched again, a new store
object (a restart) keeps what was fetched, and ``unpack``, ``push``, a plain ``pull`` and gc
treat partial layers right.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from layerfs.cli.group import cli
from layerfs.errors import DigestMismatchError, LayerFormatError
from layerfs.lazy.layer import LazyLayer, RangeFiller
from layerfs.lazy.pull import attach
from layerfs.lazy.remote import RegistryRemote
from layerfs.registry import Options
from layerfs.store import Image, Store
from layerfs.store.oci import Descriptor
from layerfs.store.partial import LazyRecord
from tests.registry.servers import RegistryServer
from tests.treedesc import host_tree

from .conftest import Images
from .synthetic import sha, zstd_chunked_blob, zstd_frame

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.interop, pytest.mark.timeout(300)]

FORMS = ["zstd_chunked", "estargz"]


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def lazy_pull(root: Path, ref: str, *extra: str) -> Image:
    run("pull", "--lazy", "--insecure", "-q", "--root", str(root), *extra, ref)
    return Store.open(root).resolve(ref)


def reader(store: Store, remote: RegistryRemote, image: Image, index: int = 0) -> LazyLayer:
    record = store.lazy.record(image.layers[index].digest)
    assert record is not None
    return remote.layer(store.lazy, record)


@pytest.mark.parametrize("form", FORMS)
def test_lazy_pull_reads_only_what_is_read_then_unpacks_like_umoci(
    images: Images, tmp_path: Path, form: str
) -> None:
    ref = getattr(images, form)
    root = tmp_path / "store"
    image = lazy_pull(root, ref)
    rows = json.loads(run("images", "--root", str(root), "--format", "json").stdout)
    assert rows[0]["local"] < rows[0]["size"] // 100  # manifest, config and TOCs only
    store = Store.open(root)
    assert store.lazy.record(image.layers[0].digest) is not None

    with RegistryRemote() as remote:
        layer = reader(store, remote, image)
        motd = (images.rootfs / "etc" / "motd").read_bytes()
        assert layer.read_file("/etc/motd") == motd
        assert layer.read("/etc/motd.link", 6, 4) == motd[6:10]
        small = (images.rootfs / "data" / "small-5").read_bytes()
        assert layer.read("/data/small-5", 3, 1000) == small[3:]
        fetched = remote.statistics().bytes
    assert 0 < fetched < image.size // 10
    assert store.lazy.read_order(image.layers[0].digest) == ["/etc/motd", "/data/small-5"]

    restarted = Store.open(root)
    assert restarted.local_bytes(image) == store.local_bytes(image)
    with RegistryRemote() as remote:
        layer = reader(restarted, remote, image)
        assert layer.read_file("/data/small-5") == small
        assert layer.read_file("/etc/motd") == motd
        assert remote.statistics().bytes == 0

    run("unpack", "--root", str(root), ref, str(tmp_path / "unpacked"))
    assert host_tree(tmp_path / "unpacked") == host_tree(images.unpacked(form))
    rows = json.loads(run("images", "--root", str(root), "--format", "json").stdout)
    assert rows[0]["local"] == rows[0]["size"]
    assert restarted.lazy.records() == []


def test_chunk_another_image_has_is_not_fetched_again(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = lazy_pull(root, images.estargz)
    second = lazy_pull(root, images.zstd_chunked)
    store = Store.open(root)
    with RegistryRemote() as remote:
        assert reader(store, remote, first).read_file("/etc/motd")
        fetched = remote.statistics().bytes
        assert reader(store, remote, second).read_file("/etc/motd")
        assert remote.statistics().bytes == fetched


def test_no_prefetch_is_recorded_and_plain_pull_completes(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.zstd_chunked, "--no-prefetch")
    store = Store.open(root)
    records = [store.lazy.record(d.digest) for d in image.layers]
    assert all(r is not None and not r.prefetch for r in records)
    with RegistryRemote() as remote:
        reader(store, remote, image).read_file("/bin/busybox")
    run("pull", "--insecure", "-q", "--root", str(root), images.zstd_chunked)
    assert store.lazy.records() == []
    assert all(store.blobs.exists(d.digest) for d in image.layers)
    run("create", "--root", str(root), images.zstd_chunked, "--name", "box")
    assert store.container("box").image == image.digest


def test_toc_less_layer_is_fetched_whole_when_needed(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.gzip)
    store = Store.open(root)
    record = store.lazy.record(image.layers[0].digest)
    assert record is not None and record.toc_format is None
    assert store.local_bytes(image) == image.manifest.config.size
    with attach(store, Options(insecure=True)):
        dirs = store.layer_dirs(image)
    assert (dirs[-1] / "etc" / "motd").read_bytes() == (images.rootfs / "etc/motd").read_bytes()
    assert store.local_bytes(image) == image.size


def test_push_of_a_lazy_image_fetches_what_it_needs(
    images: Images, registry: RegistryServer, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.estargz)
    dest = f"{registry.host}/lazy/copy:1"
    pushed = run("push", "--insecure", "-q", "--root", str(root), images.estargz, dest)
    assert pushed.stdout.strip() == image.digest
    again = lazy_pull(tmp_path / "other", dest)
    assert again.digest == image.digest


def test_gc_knows_partial_layers(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.estargz)
    store = Store.open(root)
    with RegistryRemote() as remote:
        reader(store, remote, image).read_file("/etc/motd")
    store.gc()
    assert len(store.lazy.records()) == len(image.layers)
    assert store.lazy.chunks.list()
    run("rmi", "--root", str(root), images.estargz)
    assert store.lazy.records() == [] and store.lazy.chunks.list() == []
    assert list((root / "lazy" / "blobs").iterdir()) == []


def test_hostile_toc_fails_the_pull_in_one_line_and_changes_nothing(
    registry: RegistryServer, tmp_path: Path
) -> None:
    payload = zstd_frame(b"x" * 100)
    entry = {
        "type": "reg",
        "name": "../../etc/shadow",
        "size": 100,
        "offset": 1,
        "digest": sha(b"x" * 100),
    }
    data, annotations = zstd_chunked_blob(b"\0" + payload, [entry])
    layer = Descriptor(
        "application/vnd.oci.image.layer.v1.tar+zstd", sha(data), len(data), annotations
    )  # type: ignore[arg-type]
    ref = push_single_layer(registry, tmp_path, data, layer, "lazy/hostile:1")
    root = tmp_path / "store"
    result = run("pull", "--lazy", "--insecure", "-q", "--root", str(root), ref, ok=False)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "escapes the layer root" in lines[0], result.output
    store = Store.open(root)
    assert store.images() == [] and store.lazy.records() == []


def push_single_layer(
    registry: RegistryServer, work: Path, data: bytes, layer: Descriptor, dest: str
) -> str:
    """Push an image whose only layer is *data* (described by *layer*) with plain HTTP."""
    import httpx

    base = f"{registry.url}/v2/{dest.split(':')[0]}"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(b"")]},
        }
    ).encode()
    for blob in (data, config):
        start = httpx.post(f"{base}/blobs/uploads/")
        location = httpx.URL(registry.url).join(start.headers["Location"])
        done = httpx.put(location.copy_add_param("digest", sha(blob)), content=blob)
        assert done.status_code == 201, done.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config),
            "size": len(config),
        },
        "layers": [layer.to_json()],
    }
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    put = httpx.put(
        f"{base}/manifests/{dest.split(':')[1]}", content=json.dumps(manifest), headers=headers
    )
    assert put.status_code == 201, put.text
    return f"{registry.host}/{dest}"


def test_chunk_that_does_not_match_is_never_served(
    images: Images, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    image = lazy_pull(root, images.zstd_chunked)
    store = Store.open(root)
    record = store.lazy.record(image.layers[0].digest)
    assert isinstance(record, LazyRecord)
    with RegistryRemote() as remote:
        honest = remote.filler(store.lazy, record)

        def corrupt(spans: list[tuple[int, int]], deadline: float | None) -> list[bytes]:
            data = honest._fetch(spans, deadline)
            return [bytes([d[0] ^ 0xFF]) + d[1:] for d in data]

        toc = store.lazy.toc(record)
        assert toc is not None
        layer = LazyLayer(
            store.lazy, RangeFiller(store.lazy.partial(record.descriptor), corrupt), toc
        )
        caplog.set_level(logging.ERROR)
        with pytest.raises((DigestMismatchError, LayerFormatError)):
            layer.read_file("/etc/motd")
        motd = toc.get("/etc/motd")
        assert motd is not None
        assert not any(store.lazy.chunks.has(c.digest) for c in motd.chunks)
        assert len([r for r in caplog.records if "/etc/motd" in r.getMessage()]) == 1
        good = remote.layer(store.lazy, record).read_file("/etc/motd")
        assert hashlib.sha256(good).hexdigest() == motd.digest.split(":")[1]  # type: ignore[union-attr]
