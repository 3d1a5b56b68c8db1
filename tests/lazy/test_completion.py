"""Background completion: recorded first reads come first, then the whole layer; no-prefetch.

The order a container first read files in is recorded per layer and survives a restart; the
next completion's first range requests are those files' chunks, then it fetches the rest,
verifies each blob, unpacks it as an ordinary layer, and readers opened before keep reading.
A layer pulled with ``--no-prefetch`` is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from layerfs.cli.group import cli
from layerfs.lazy.completion import Completion
from layerfs.lazy.remote import RegistryRemote
from layerfs.registry.ranges import RangeClient
from layerfs.store import Store

from .conftest import Images

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.interop, pytest.mark.timeout(300)]


def lazy_pull(root: Path, ref: str, *extra: str) -> None:
    result = CliRunner().invoke(
        cli, ["pull", "--lazy", "--insecure", "-q", "--root", str(root), *extra, ref]
    )
    assert result.exit_code == 0, result.output


def test_completion_fetches_recorded_reads_first_then_everything(
    images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    lazy_pull(root, images.zstd_chunked)
    store = Store.open(root)
    image = store.resolve(images.zstd_chunked)
    base = image.layers[0]
    # what an earlier start of the image read (its bytes are not in this store)
    store.lazy.note_read(base.digest, "/data/small-7")
    store.lazy.note_read(base.digest, "/data/small-3")

    requests: list[tuple[str, tuple[int, int]]] = []
    original = RangeClient.read_ranges

    def recording(
        self: RangeClient,
        digest: str,
        spans: Sequence[tuple[int, int]],
        deadline: float | None = None,
    ) -> list[bytes]:
        requests.extend((digest, span) for span in spans)
        return original(self, digest, spans, deadline)

    monkeypatch.setattr(RangeClient, "read_ranges", recording)
    restarted = Store.open(root)
    assert restarted.lazy.read_order(base.digest) == ["/data/small-7", "/data/small-3"]
    with RegistryRemote() as remote:
        record = restarted.lazy.record(base.digest)
        assert record is not None
        reader = remote.layer(restarted.lazy, record)
        toc = reader.toc
        completion = Completion(restarted, image, remote).start()
        assert completion.wait_done(120)
        assert completion.statistics().error is None
        assert completion.statistics().layers == len(image.layers)
        assert reader.read_file("/etc/motd") == (images.rootfs / "etc" / "motd").read_bytes()

    first = [span for digest, span in requests if digest == base.digest]
    small = toc.get("/data/small-7")
    assert small is not None and first, requests
    assert first[0][0] <= small.chunks[0].start < small.chunks[0].end <= first[0][1]
    assert restarted.lazy.records() == []
    assert all(restarted.blobs.exists(d.digest) for d in image.layers)
    assert all(restarted.layout.layer_dir(d).is_dir() for d in image.diff_ids)


def test_no_prefetch_layers_are_left_alone(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    lazy_pull(root, images.estargz, "--no-prefetch")
    store = Store.open(root)
    image = store.resolve(images.estargz)
    with RegistryRemote() as remote:
        completion = Completion(store, image, remote).start()
        assert completion.wait_done(60)
        assert completion.statistics().layers == 0
        assert remote.statistics().bytes == 0
    assert len(store.lazy.records()) == len(image.layers)
