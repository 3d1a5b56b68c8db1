"""Interop with skopeo and umoci through a real docker-registry.

* An image ``skopeo copy`` pushed is pulled by layerfs with the registry's manifest digest,
  and its tree (a Stack over the unpacked layers) matches ``umoci unpack`` of the same image.
* An image layerfs pushed is copied back by ``skopeo copy --preserve-digests`` to an OCI
  layout: same manifest digest, same blobs, byte for byte.
* A multi-platform index skopeo pushed (``--all``) gives the manifest of the platform asked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from layerfs.errors import RegistryError
from layerfs.registry import pull, push
from layerfs.registry.platforms import host_platform, parse_platform
from layerfs.store import Store
from layerfs.store.oci import OCI_INDEX
from tests.treedesc import host_tree

from ..store.builders import BASE, TOP, write_oci_layout
from ..store.builders import Image as LayoutImage
from .helpers import blob_digests, committed_image, image_tree, options
from .servers import RegistryServer

pytestmark = [
    pytest.mark.network,
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not (shutil.which("skopeo") and shutil.which("umoci")), reason="needs skopeo and umoci"
    ),
]


def sh(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def skopeo_push(source: str, registry: RegistryServer, dest: str, *extra: str) -> None:
    sh(
        "skopeo",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        *extra,
        source,
        f"docker://{registry.host}/{dest}",
    )


def test_skopeo_pushed_image_pulled_matches_umoci(registry: RegistryServer, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [LayoutImage("demo", [BASE, TOP])])
    skopeo_push(f"oci:{layout}:demo", registry, "interop/demo:1")
    ref = f"{registry.host}/interop/demo:1"
    remote = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"))

    store = Store.open(tmp_path / "store")
    result = pull(store, ref, options())
    assert result.image.digest == remote["Digest"]
    assert [d.digest for d in result.image.layers] == remote["Layers"]

    sh("umoci", "unpack", "--image", f"{layout}:demo", tmp_path / "unpacked")
    expected = host_tree(tmp_path / "unpacked" / "rootfs")
    assert "/etc/motd" in expected and "/etc/gone" not in expected
    assert image_tree(store, result.image) == expected


def test_layerfs_pushed_image_copied_back_by_skopeo(
    registry: RegistryServer, tmp_path: Path
) -> None:
    image = committed_image(tmp_path / "store", tmp_path, big=50_000)
    store = Store.open(tmp_path / "store")
    ref = f"{registry.host}/interop/mine:1"
    assert push(store, "app:1", ref, options()).digest == image.digest

    out = tmp_path / "copy"
    sh(
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--preserve-digests",
        f"docker://{ref}",
        f"oci:{out}:mine",
    )
    (entry,) = json.loads((out / "index.json").read_text())["manifests"]
    assert entry["digest"] == image.digest
    for digest in [image.digest, *blob_digests(image)]:
        copied = (out / "blobs" / "sha256" / digest[7:]).read_bytes()
        assert copied == store.blobs.get(digest)
        assert "sha256:" + hashlib.sha256(copied).hexdigest() == digest


def _multi_platform_layout(layout: Path) -> dict[str, str]:
    """A layout whose tag ``multi`` is an index of a linux/amd64 and a linux/arm64 image."""
    digests = write_oci_layout(
        layout, [LayoutImage("amd", [BASE]), LayoutImage("arm", [BASE, TOP])]
    )
    blobs = layout / "blobs" / "sha256"
    entries = []
    for name, arch in (("amd", "amd64"), ("arm", "arm64")):
        size = (blobs / digests[name][7:]).stat().st_size
        entries.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digests[name],
                "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (blobs / digest[7:]).write_bytes(index)
    top = {
        "mediaType": OCI_INDEX,
        "digest": digest,
        "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return {"amd64": digests["amd"], "arm64": digests["arm"], "index": digest}


def test_index_selects_the_platform(registry: RegistryServer, tmp_path: Path) -> None:
    digests = _multi_platform_layout(tmp_path / "layout")
    skopeo_push(f"oci:{tmp_path / 'layout'}:multi", registry, "interop/multi:1", "--all")
    ref = f"{registry.host}/interop/multi:1"
    store = Store.open(tmp_path / "store")

    arm = pull(store, ref, options(platform=parse_platform("linux/arm64")))
    assert arm.image.digest == digests["arm64"]
    if host_platform().architecture in ("amd64", "arm64"):
        default = pull(store, ref, options())
        assert default.image.digest == digests[host_platform().architecture]
    with pytest.raises(RegistryError, match=r"no image for linux/s390x \(offered: linux/amd64"):
        pull(store, ref, options(platform=parse_platform("linux/s390x")))
