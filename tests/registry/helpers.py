"""Images and trees for the registry tests: a layerfs commit, and trees read through a Stack."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from layerfs import Stack
from layerfs.registry import Options, RetryPolicy
from layerfs.store import Image, Store
from layerfs.tar import Compression
from tests.treedesc import Tree, stack_tree

from ..store.builders import BASE, TOP, write_oci_layout
from ..store.builders import Image as LayoutImage

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def options(**changes: Any) -> Options:
    """Options for a loopback registry: plain HTTP, quick retries."""
    return Options(**{"insecure": True, "retry": FAST_RETRY, **changes})


def base_layout(dest: Path, name: str = "base:1") -> Path:
    write_oci_layout(dest, [LayoutImage(name, [BASE, TOP])])
    return dest


def committed_image(root: Path, work: Path, *, big: int = 0, name: str = "app:1") -> Image:
    """Import a two-layer base, change it through a Stack over the container, commit.

    *big* adds a file of that many pseudo-random (incompressible, reproducible) bytes.
    """
    store = Store.open(root)
    store.import_path(base_layout(work / "layout"))
    store.create_container("base:1", name="box")
    with Stack(*store.mount_spec("box")) as stack:
        stack.write_bytes("/etc/motd", b"pushed by layerfs\n")
        stack.chmod("/etc/motd", 0o600)
        stack.unlink("/etc/passwd")
        stack.mkdir("/data", 0o750)
        stack.symlink("../etc/motd", "/data/motd")
        if big:
            stack.write_bytes("/data/big", random.Random(big).randbytes(big))
    return store.commit("box", name, compression=Compression.GZIP, message="registry test")


def image_tree(store: Store, image: Image) -> Tree:
    with Stack(store.layer_dirs(image)) as stack:
        return stack_tree(stack)


def blob_digests(image: Image) -> list[str]:
    return [image.manifest.config.digest, *(d.digest for d in image.layers)]


def manifest_requests(log: str, repository: str) -> int:
    """How many manifest GETs for *repository* a docker-registry access log shows."""
    return log.count(f"GET /v2/{repository}/manifests/")
