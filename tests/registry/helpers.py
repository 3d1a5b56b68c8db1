"""Images and trees for the registry tests: a layerfs commit, and trees read through a Stack."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path
from typing import Any

from layerfs import Stack
from layerfs.registry import Options, RetryPolicy
from layerfs.store import Image, Store
from layerfs.tar import Compression

from ..store.builders import BASE, TOP, write_oci_layout
from ..store.builders import Image as LayoutImage

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
Tree = dict[str, tuple[Any, ...]]


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


def _describe(
    mode: int, uid: int, gid: int, size: int, content: bytes | str | None
) -> tuple[Any, ...]:
    if stat.S_ISREG(mode):
        data = content if isinstance(content, bytes) else b""
        return ("f", stat.S_IMODE(mode), uid, gid, size, hashlib.sha256(data).hexdigest())
    if stat.S_ISLNK(mode):
        return ("l", uid, gid, content)
    return (stat.S_IFMT(mode), stat.S_IMODE(mode), uid, gid)


def stack_tree(stack: Stack, path: str = "/") -> Tree:
    """Paths, types, modes, owners, sizes, content hashes and link targets of a merged view."""
    tree: Tree = {}
    for name in stack.listdir(path):
        child = f"{path.rstrip('/')}/{name}"
        st = stack.lstat(child)
        content: bytes | str | None = None
        if stat.S_ISREG(st.mode):
            content = stack.read_bytes(child)
        elif stat.S_ISLNK(st.mode):
            content = stack.readlink(child)
        tree[child] = _describe(st.mode, st.uid, st.gid, st.size, content)
        if stat.S_ISDIR(st.mode):
            tree.update(stack_tree(stack, child))
    return tree


def image_tree(store: Store, image: Image) -> Tree:
    with Stack(store.layer_dirs(image)) as stack:
        return stack_tree(stack)


def host_tree(root: Path) -> Tree:
    """The same description for a directory on the host (``umoci unpack`` output)."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            tree["/" + str(path.relative_to(root))] = _describe(
                st.st_mode, st.st_uid, st.st_gid, st.st_size, content
            )
    return tree


def blob_digests(image: Image) -> list[str]:
    return [image.manifest.config.digest, *(d.digest for d in image.layers)]


def manifest_requests(log: str, repository: str) -> int:
    """How many manifest GETs for *repository* a docker-registry access log shows."""
    return log.count(f"GET /v2/{repository}/manifests/")
