"""Mirrors from ``registries.json``: tried first, skipped when down or lacking the image."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs.registry import pull, push
from layerfs.store import Store

from .helpers import committed_image, manifest_requests, options
from .servers import RegistryServer, free_port

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path / "mirror") as server:
        yield server


def configure(config_dir: Path, registry: str, mirrors: list[str]) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    doc = {"mirrors": {registry: mirrors}, "insecure": [registry]}
    (config_dir / "registries.json").write_text(json.dumps(doc))


def test_mirror_first_then_registry_when_mirror_is_down(
    registry: RegistryServer, mirror: RegistryServer, tmp_path: Path, isolated_config: Path
) -> None:
    image = committed_image(tmp_path / "origin", tmp_path)
    origin = Store.open(tmp_path / "origin")
    push(origin, "app:1", f"{registry.host}/mirrored/app:1", options())
    push(origin, "app:1", f"{mirror.host}/mirrored/app:1", options())  # the mirror's copy
    configure(isolated_config, registry.host, [f"http://{mirror.host}"])
    ref = f"{registry.host}/mirrored/app:1"

    before = manifest_requests(registry.log(), "mirrored/app")
    result = pull(Store.open(tmp_path / "a"), ref, options(insecure=False))
    assert result.endpoint == f"http://{mirror.host}"
    assert result.name == ref and result.image.digest == image.digest
    assert manifest_requests(registry.log(), "mirrored/app") == before
    assert manifest_requests(mirror.log(), "mirrored/app") >= 1

    mirror.kill()
    fallback = pull(Store.open(tmp_path / "b"), ref, options(insecure=False))
    assert fallback.endpoint == f"http://{registry.host}"
    assert fallback.image.digest == image.digest
    assert manifest_requests(registry.log(), "mirrored/app") == before + 1


def test_mirror_lacking_the_image_falls_back(
    registry: RegistryServer, mirror: RegistryServer, tmp_path: Path, isolated_config: Path
) -> None:
    image = committed_image(tmp_path / "origin", tmp_path)
    push(Store.open(tmp_path / "origin"), "app:1", f"{registry.host}/only/here:1", options())
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configure(isolated_config, registry.host, [dead, f"http://{mirror.host}"])
    mirror_requests = manifest_requests(mirror.log(), "only/here")
    result = pull(Store.open(tmp_path / "a"), f"{registry.host}/only/here:1", options())
    assert result.endpoint == f"http://{registry.host}"
    assert result.image.digest == image.digest
    assert manifest_requests(mirror.log(), "only/here") == mirror_requests + 1


def test_pull_through_cache_mirror(
    registry: RegistryServer, tmp_path: Path, isolated_config: Path
) -> None:
    image = committed_image(tmp_path / "origin", tmp_path)
    push(Store.open(tmp_path / "origin"), "app:1", f"{registry.host}/cached/app:1", options())
    with RegistryServer(tmp_path / "cache", proxy_remote=registry.url) as cache:
        configure(isolated_config, registry.host, [f"http://{cache.host}"])
        result = pull(Store.open(tmp_path / "a"), f"{registry.host}/cached/app:1", options())
        assert result.endpoint == f"http://{cache.host}"
        assert result.image.digest == image.digest
        assert manifest_requests(cache.log(), "cached/app") >= 1
