"""Fixtures of the lazy-pull tests: a registry, a containerd, and one image in both formats."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.registry.servers import RegistryServer

from .tools import Containerd, build_layout, push_estargz, push_gzip, push_zstd_chunked, sh

NAME = "lazy"


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$LAYERFS_CONFIG`` and ``$DOCKER_CONFIG`` in tmp: never the user's credentials."""
    config = tmp_path / "config"
    monkeypatch.setenv("LAYERFS_CONFIG", str(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return config


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    need("docker-registry")
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    need("containerd", "ctr-remote")
    with Containerd(tmp_path_factory.mktemp("containerd")) as daemon:
        yield daemon


@dataclass(frozen=True)
class Images:
    """One image (umoci, two layers) in three forms in the registry, and its umoci unpack."""

    layout: Path
    rootfs: Path  # umoci unpack of the layout
    gzip: str
    zstd_chunked: str
    estargz: str
    work: Path

    def unpacked(self, form: str) -> Path:
        """``umoci unpack`` of the image *form* names, as the registry has it (an eStargz
        layer carries its TOC and landmark files as tar entries). Debian's umoci reads no
        zstd layers; skopeo made the zstd:chunked layers from the layout's own tars, so the
        layout's unpack is their tree."""
        if form != "estargz":
            return self.rootfs
        target = self.work / f"unpacked-{form}"
        if not target.is_dir():
            layout = self.work / f"copy-{form}"
            sh(
                "skopeo",
                "copy",
                "-q",
                "--src-tls-verify=false",
                f"docker://{getattr(self, form)}",
                f"oci:{layout}:{NAME}",
            )
            sh("umoci", "unpack", "--image", f"{layout}:{NAME}", target)
        return target / "rootfs"


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, containerd: Containerd
) -> Images:
    need("umoci", "skopeo")
    work = tmp_path_factory.mktemp("images")
    layout = build_layout(work, NAME)
    sh("umoci", "unpack", "--image", f"{layout}:{NAME}", work / "unpacked")
    gzip_ref = push_gzip(layout, NAME, registry, "lazy/app:gzip")
    zstd_ref = push_zstd_chunked(layout, NAME, registry, "lazy/app:zstd-chunked")
    prioritised = ["etc/motd", "bin/busybox"]
    esgz_ref = f"{registry.host}/lazy/app:estargz"
    push_estargz(containerd, gzip_ref, esgz_ref, record=prioritised)
    return Images(layout, work / "unpacked" / "rootfs", gzip_ref, zstd_ref, esgz_ref, work)
