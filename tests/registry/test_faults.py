"""A registry that goes away mid-transfer, and one that serves corrupted bytes.

A :class:`FaultProxy` forwards to the registry; once armed it cuts every connection after a
set number of bytes and SIGKILLs the registry, or flips one byte of a blob. Afterwards the
store holds only complete, verified blobs, the user saw one clear line, and a retry (with the
registry started again) completes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from layerfs.cli.group import cli
from layerfs.errors import DigestMismatchError
from layerfs.registry import pull, push
from layerfs.store import Store

from .helpers import committed_image, options
from .servers import FaultProxy, RegistryServer

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.timeout(180)]

BIG = 2_000_000  # bytes of incompressible data in the top layer
CUT = 500_000  # bytes after which the connection is cut (inside the big blob)


@pytest.fixture
def proxy(own_registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(own_registry.port) as forwarder:
        yield forwarder


def assert_store_clean(root: Path) -> None:
    """Every stored blob hashes to its name and nothing is left in tmp/."""
    for blob in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert list((root / "tmp").iterdir()) == []


def one_line_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output and lines[0].startswith("layerfs: ")
    return lines[0]


def test_registry_killed_during_pull(
    own_registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    image = committed_image(tmp_path / "origin", tmp_path, big=BIG)
    push(Store.open(tmp_path / "origin"), "app:1", f"{own_registry.host}/f/app:1", options())
    big = image.layers[-1]
    root = tmp_path / "store"
    ref = f"{proxy.host}/f/app:1"

    proxy.arm(drop_after_down=CUT, on_drop=own_registry.kill)
    result = CliRunner().invoke(cli, ["pull", "--insecure", "-q", "--root", str(root), ref])
    assert proxy.dropped.is_set()
    assert result.exit_code == 1
    assert "connection" in one_line_error(result.stderr)
    store = Store.open(root)
    assert store.images() == []
    assert not store.blobs.exists(big.digest)
    assert_store_clean(root)

    own_registry.start()
    proxy.disarm()
    again = CliRunner().invoke(cli, ["pull", "--insecure", "-q", "--root", str(root), ref])
    assert again.exit_code == 0, again.output
    assert store.resolve(ref).digest == image.digest
    assert_store_clean(root)


def test_registry_killed_during_push(
    own_registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    image = committed_image(tmp_path / "store", tmp_path, big=BIG)
    big = image.layers[-1]
    root = tmp_path / "store"
    ref = f"{proxy.host}/f/pushed:1"

    proxy.arm(drop_after_up=CUT, on_drop=own_registry.kill)
    result = CliRunner().invoke(
        cli, ["push", "--insecure", "-q", "--root", str(root), "app:1", ref]
    )
    assert proxy.dropped.is_set()
    assert result.exit_code == 1
    assert "connection" in one_line_error(result.stderr)

    own_registry.start()
    proxy.disarm()
    head = httpx.head(f"{own_registry.url}/v2/f/pushed/blobs/{big.digest}")
    assert head.status_code == 404  # no partial blob was committed
    assert httpx.head(f"{own_registry.url}/v2/f/pushed/manifests/1").status_code == 404
    assert_store_clean(root)
    assert Store.open(root).resolve("app:1").digest == image.digest

    again = CliRunner().invoke(cli, ["push", "--insecure", "-q", "--root", str(root), "app:1", ref])
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == image.digest


def test_corrupted_blob_is_rejected_and_not_stored(
    own_registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    image = committed_image(tmp_path / "origin", tmp_path, big=BIG)
    push(Store.open(tmp_path / "origin"), "app:1", f"{own_registry.host}/f/bad:1", options())
    big = image.layers[-1]
    root = tmp_path / "store"
    store = Store.open(root)

    proxy.arm(corrupt_down_at=CUT)
    with pytest.raises(DigestMismatchError, match=big.digest):
        pull(store, f"{proxy.host}/f/bad:1", options(parallel=1))
    assert proxy.corrupted.is_set()
    assert not store.blobs.exists(big.digest)
    assert store.images() == []
    assert_store_clean(root)

    proxy.arm(corrupt_down_at=CUT)
    result = CliRunner().invoke(
        cli, ["pull", "--insecure", "-q", "--root", str(root), f"{proxy.host}/f/bad:1"]
    )
    assert result.exit_code == 1
    assert big.digest in one_line_error(result.stderr)

    proxy.disarm()
    assert pull(store, f"{proxy.host}/f/bad:1", options()).image.digest == image.digest
    assert_store_clean(root)
