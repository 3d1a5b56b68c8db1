"""Fixtures of the registry tests: a docker-registry per module, isolated config directories."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import RegistryServer


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$LAYERFS_CONFIG`` and ``$DOCKER_CONFIG`` in tmp: never the user's credentials."""
    config = tmp_path / "config"
    monkeypatch.setenv("LAYERFS_CONFIG", str(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return config


def _need_registry() -> None:
    if shutil.which("docker-registry") is None:
        pytest.skip("needs docker-registry")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain (no auth) docker-registry on 127.0.0.1, shared by a module's tests."""
    _need_registry()
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A docker-registry for one test (which may kill and restart it)."""
    _need_registry()
    with RegistryServer(tmp_path / "own-registry") as server:
        yield server
