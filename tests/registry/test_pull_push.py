"""Pull and push against a real docker-registry on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from layerfs.cli.group import cli
from layerfs.errors import RegistryError
from layerfs.registry import pull, push
from layerfs.store import Store
from tests.progress import RecordingProgress

from .helpers import blob_digests, committed_image, image_tree, options
from .servers import RegistryServer

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.timeout(120)]


def test_roundtrip_commit_push_delete_pull(registry: RegistryServer, tmp_path: Path) -> None:
    image = committed_image(tmp_path / "store", tmp_path, big=300_000)
    store = Store.open(tmp_path / "store")
    tree = image_tree(store, image)
    assert "/data/big" in tree and "/etc/passwd" not in tree
    ref = f"{registry.host}/team/roundtrip:1"

    pushed = push(store, "app:1", ref, options())
    assert pushed.digest == image.digest
    assert sorted(pushed.uploaded) == sorted(blob_digests(image))
    shutil.rmtree(tmp_path / "store")

    fresh = Store.open(tmp_path / "fresh")
    pulled = pull(fresh, ref, options())
    assert pulled.name == ref
    assert pulled.image.digest == image.digest
    assert blob_digests(pulled.image) == blob_digests(image)
    assert sorted(pulled.fetched) == sorted(blob_digests(image))
    assert fresh.resolve(ref).names == (ref,)
    assert image_tree(fresh, pulled.image) == tree

    listing = CliRunner().invoke(cli, ["images", "--root", str(tmp_path / "fresh")])
    assert listing.exit_code == 0, listing.output
    assert f"{registry.host}/team/roundtrip" in listing.output


def test_transfers_report_one_task_per_blob(registry: RegistryServer, tmp_path: Path) -> None:
    image = committed_image(tmp_path / "store", tmp_path, big=300_000)
    store = Store.open(tmp_path / "store")
    ref = f"{registry.host}/team/progress:1"
    sent = RecordingProgress()
    push(store, "app:1", ref, options(progress=sent, chunk_size=100_000))
    received = RecordingProgress()
    pull(Store.open(tmp_path / "fresh"), ref, options(progress=received))
    sizes = {d.digest: d.size for d in (image.manifest.config, *image.layers)}
    for recorder in (sent, received):
        assert sorted(recorder.tasks) == sorted(sizes)
        assert {k: t.done for k, t in recorder.tasks.items()} == sizes
        assert {k: t.total for k, t in recorder.tasks.items()} == sizes
        assert recorder.all_ended()


def test_second_push_and_pull_transfer_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    image = committed_image(tmp_path / "store", tmp_path)
    store = Store.open(tmp_path / "store")
    ref = f"{registry.host}/team/again:1"
    push(store, "app:1", ref, options())
    again = push(store, "app:1", ref, options())
    assert again.uploaded == () and again.mounted == ()
    assert sorted(again.present) == sorted(blob_digests(image))

    pulled = pull(store, ref, options())
    assert pulled.fetched == ()
    assert sorted(pulled.present) == sorted(blob_digests(image))
    assert pulled.image.digest == image.digest


def test_push_mounts_blobs_from_the_repository_pulled_from(
    registry: RegistryServer, tmp_path: Path
) -> None:
    committed_image(tmp_path / "origin", tmp_path)
    push(Store.open(tmp_path / "origin"), "app:1", f"{registry.host}/team/source:1", options())
    store = Store.open(tmp_path / "store")
    image = pull(store, f"{registry.host}/team/source:1", options()).image

    result = push(
        store, f"{registry.host}/team/source:1", f"{registry.host}/other/copy:2", options()
    )
    assert result.uploaded == ()
    assert sorted(result.mounted) == sorted(blob_digests(image))
    assert result.digest == image.digest
    for digest in blob_digests(image):
        head = httpx.head(f"{registry.url}/v2/other/copy/blobs/{digest}")
        assert head.status_code == 200


def test_chunked_upload(registry: RegistryServer, tmp_path: Path) -> None:
    image = committed_image(tmp_path / "store", tmp_path, big=200_000)
    store = Store.open(tmp_path / "store")
    ref = f"{registry.host}/team/chunked:1"
    result = push(store, "app:1", ref, options(chunk_size=32 << 10))
    assert result.digest == image.digest
    assert "PATCH /v2/team/chunked/blobs/uploads/" in registry.log()
    fresh = Store.open(tmp_path / "fresh")
    assert pull(fresh, ref, options()).image.digest == image.digest
    assert image_tree(fresh, fresh.resolve(ref)) == image_tree(store, image)


def test_chunked_upload_with_relative_locations(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "relative", relative_urls=True) as server:
        image = committed_image(tmp_path / "store", tmp_path, big=100_000)
        store = Store.open(tmp_path / "store")
        ref = f"{server.host}/rel/app:1"
        assert push(store, "app:1", ref, options(chunk_size=16 << 10)).digest == image.digest
        assert pull(Store.open(tmp_path / "fresh"), ref, options()).image.digest == image.digest


def test_pull_by_digest_is_stored_untagged(registry: RegistryServer, tmp_path: Path) -> None:
    image = committed_image(tmp_path / "store", tmp_path)
    push(Store.open(tmp_path / "store"), "app:1", f"{registry.host}/team/pinned:1", options())
    fresh = Store.open(tmp_path / "fresh")
    result = pull(fresh, f"{registry.host}/team/pinned@{image.digest}", options())
    assert result.name is None
    (only,) = fresh.images()
    assert only.digest == image.digest and only.names == ()

    tagged = pull(fresh, f"{registry.host}/team/pinned:1@{image.digest}", options())
    assert tagged.name == f"{registry.host}/team/pinned:1"
    assert [im.names for im in fresh.images()] == [(tagged.name,)]


def test_missing_image_is_a_clear_error(registry: RegistryServer, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    with pytest.raises(RegistryError, match="manifest unknown"):
        pull(store, f"{registry.host}/team/nothing:1", options())
    assert store.images() == []
    result = CliRunner().invoke(
        cli, ["pull", "--insecure", "--root", str(tmp_path / "store"), f"{registry.host}/no/such:1"]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "manifest unknown" in lines[0] and "Traceback" not in result.output


def test_cli_push_and_pull_print_the_digest(registry: RegistryServer, tmp_path: Path) -> None:
    image = committed_image(tmp_path / "store", tmp_path)
    ref = f"{registry.host}/cli/app:7"
    runner = CliRunner()
    pushed = runner.invoke(
        cli, ["push", "--insecure", "--quiet", "--root", str(tmp_path / "store"), "app:1", ref]
    )
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.strip() == image.digest
    pulled = runner.invoke(cli, ["pull", "--insecure", "--root", str(tmp_path / "fresh"), ref])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.strip() == image.digest
    assert Store.open(tmp_path / "fresh").resolve(ref).digest == image.digest
