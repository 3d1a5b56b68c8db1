"""Volumes end to end: runc runs containers whose volumes outlive them.

The image is built by the builders and its config edited by umoci (``--config.volume``,
``--config.workingdir``, ``--config.env``, ``--config.user``, ``--config.entrypoint`` and
``--config.cmd``), as a build tool would write it; the process runs as that user, uid 1000.
Everything the test does to the store goes through the ``layerfs`` command; runc runs the
bundles.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from layerfs.store import Store
from layerfs.tar import open_decompressed

from .builders import E, Image, write_oci_layout
from .helpers import meta_tree, run_layerfs

pytestmark = [
    pytest.mark.root,
    pytest.mark.fuse,
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("runc", "busybox", "umoci")),
        reason="needs runc, busybox and umoci",
    ),
]

FIRST = """set -e
pwd > /named/cwd
echo "$APP" > /named/env
echo named-data > /named/file
echo cache-data > /cache/new
cat /cache/seed > /named/seed-seen
echo layer-data > /app/layer-file
cat /hostro/in
if echo x > /hostro/out 2>/dev/null; then echo WRITABLE; fi
"""
SECOND = """cat /named/file
test -e /app/layer-file && echo OLD-LAYER
test -e /cache/new && echo OLD-CACHE
cat /cache/seed
"""


def _image_layer() -> list[E]:
    busybox = Path(shutil.which("busybox") or "").read_bytes()
    return [
        E("bin", "dir"),
        E("bin/busybox", data=busybox, mode=0o755),
        E("bin/sh", "symlink", target="busybox"),
        E("cache", "dir", mode=0o2775, uid=1000, gid=1000, mtime=1_600_000_000,
          xattrs=(("user.origin", b"image"),)),
        E("cache/seed", data=b"seed\n", mode=0o640, uid=1000, gid=1001, mtime=1_650_000_000,
          xattrs=(("user.note", b"kept"),)),
        E("cache/seed-hard", "hardlink", target="cache/seed"),
        E("cache/seed-link", "symlink", target="seed"),
        E("cache/sub", "dir", mode=0o700, uid=1000, gid=1000),
        E("cache/sub/deep", data=b"deep\n", mode=0o600, uid=1000, gid=1000),
        E("named", "dir", uid=1000, gid=1000),
        E("app", "dir", uid=1000, gid=1000),
    ]  # fmt: skip


def _layerfs(*args: str | Path) -> str:
    result = run_layerfs(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _sh(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=60)


@contextmanager
def _bundle(root: Path, container: str, bundle: Path, script: str | None) -> Iterator[None]:
    """``layerfs bundle`` (the container mounted at bundle/rootfs), unmounted at the end.

    The process runs *script*, or the image's Entrypoint and Cmd when it is None.
    """
    command = ("--", "/bin/sh", "-c", script) if script is not None else ()
    result = run_layerfs("bundle", "--root", root, container, bundle, *command)
    assert result.returncode == 0, result.stderr
    try:
        yield
    finally:
        if run_layerfs("umount", bundle / "rootfs").returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(bundle / "rootfs")], check=False)


def _runc(bundle: Path) -> str:
    run = subprocess.run(
        ["runc", "run", "--bundle", str(bundle), f"layerfs-test-{secrets.token_hex(4)}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def _volumes(root: Path) -> dict[str, dict[str, object]]:
    rows = json.loads(_layerfs("volume", "ls", "--root", root, "--format", "json"))
    return {row["name"]: row for row in rows}


def _top_layer_names(root: Path, ref: str) -> list[str]:
    store = Store.open(root)
    manifest = json.loads(store.blobs.get(store.resolve(ref).digest))
    digest = manifest["layers"][-1]["digest"]
    with store.blobs.open(digest) as raw, open_decompressed(raw) as plain:
        data = plain.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_volumes_outlive_the_container(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_oci_layout(src, [Image("app:1", [_image_layer()])])
    _sh("umoci", "config", "--image", f"{src}:app:1", "--config.volume", "/cache",
        "--config.workingdir", "/app", "--config.env", "APP=from-the-image",
        "--config.user", "1000:1000", "--config.entrypoint", "/bin/sh",
        "--config.cmd=-c", f"--config.cmd={SECOND}")  # fmt: skip
    _sh("umoci", "unpack", "--image", f"{src}:app:1", tmp_path / "umoci")
    root = tmp_path / "store"
    host = tmp_path / "host"
    host.mkdir(mode=0o777)
    host.chmod(0o777)  # writable by the container's user, were the bind mount not read-only
    (host / "in").write_text("from the host\n")
    _layerfs("import", "--root", root, src)
    assert _layerfs("volume", "create", "--root", root, "--label", "app=test", "named") == "named\n"
    _layerfs(
        "create", "--root", root, "--name", "first", "-v", "named:/named",
        "-v", f"{host}:/hostro:ro", "app:1",
    )  # fmt: skip

    # the image's anonymous volume exists and starts as a copy of the image's /cache
    (anon,) = [name for name, row in _volumes(root).items() if row["anonymous"]]
    anon_data = Path(str(_volumes(root)[anon]["path"]))
    assert meta_tree(anon_data) == meta_tree(tmp_path / "umoci" / "rootfs" / "cache")
    assert meta_tree(anon_data)["/"][:6] == (
        0o040000, 0o2775, 1000, 1000, 1_600_000_000 * 10**9, (("user.origin", b"image"),)
    )  # fmt: skip

    # the empty named volume takes the owner and mode of the image's empty /named
    named_data = Path(str(_volumes(root)["named"]["path"]))
    assert (named_data.stat().st_uid, os.listdir(named_data)) == (1000, [])

    with _bundle(root, "first", tmp_path / "b1", FIRST):
        assert _runc(tmp_path / "b1") == "from the host\n"  # and /hostro was read-only
    assert (named_data / "file").read_text() == "named-data\n"
    assert (named_data / "cwd").read_text() == "/app\n"  # WorkingDir, Env, User: the image's
    assert (named_data / "file").stat().st_uid == 1000
    assert (named_data / "env").read_text() == "from-the-image\n"
    assert (named_data / "seed-seen").read_text() == "seed\n"
    assert (anon_data / "new").read_text() == "cache-data\n"
    assert not (host / "out").exists()
    upper = Store.open(root).container("first").upper
    assert (upper / "app" / "layer-file").read_text() == "layer-data\n"
    assert not (upper / "named" / "file").exists() and not (upper / "cache" / "new").exists()

    # diff and commit of the first container hold none of the volume paths
    volume_paths = ("/named", "/cache", "/hostro")
    diff = _layerfs("diff", "--root", root, "first").splitlines()
    assert "A /app/layer-file" in diff
    assert not [line for line in diff if line[2:].startswith(volume_paths)], diff
    _layerfs("commit", "--root", root, "first", "app:2")
    names = _top_layer_names(root, "app:2")
    assert "app/layer-file" in names
    assert not [n for n in names if ("/" + n).startswith(volume_paths)], names

    # a volume in use cannot be removed: one line, exit 1, nothing removed
    refused = run_layerfs("volume", "rm", "--root", root, "named")
    assert refused.returncode == 1
    assert refused.stderr == "layerfs: volume named is in use by container first\n"
    assert (named_data / "file").is_file()
    assert _volumes(root)["named"]["containers"] == ["first"]

    # the container goes; its volumes stay (the anonymous one dangling) and serve a new one
    assert _layerfs("rm", "--root", root, "first") == "first\n"
    assert set(_volumes(root)) == {"named", anon} and _volumes(root)[anon]["containers"] == []
    _layerfs("create", "--root", root, "--name", "second", "-v", "named:/named", "app:1")
    with _bundle(root, "second", tmp_path / "b2", None):  # the image's Entrypoint + Cmd
        assert _runc(tmp_path / "b2") == "named-data\nseed\n"

    # rm -v takes the second container's anonymous volume; prune the first's; then named
    _layerfs("rm", "--root", root, "-v", "second")
    assert set(_volumes(root)) == {"named", anon}
    assert _layerfs("volume", "prune", "--root", root) == f"{anon}\n"
    assert _layerfs("volume", "rm", "--root", root, "named") == "named\n"
    assert _volumes(root) == {}
