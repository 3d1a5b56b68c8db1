"""Crash safety: a writer SIGKILLed mid-way leaves no partial blob, no half-unpacked layer and
no half-copied volume.

The victim is a real subprocess reading a layer blob from a FIFO that the test feeds, so it is
killed at a known point (inside the blob copy, or inside the layer unpack) without timing
guesses: the test waits for the staging files to appear, bounded by a deadline. A victim that
creates a container with volumes kills itself instead, from inside a wrapped store function.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerfs.store.store import Store

from .builders import BASE, E, Image, write_oci_layout

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # seconds to wait for the victim to reach the kill point
BIG = [E("data", "dir")] + [
    E(f"data/f{i:03}", data=hashlib.sha256(str(i).encode()).digest() * 4096) for i in range(40)
]  # 40 files of 128 KiB that gzip cannot shrink much


def _victim(code: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert proc.poll() is None, "victim exited before the kill point"
        assert time.monotonic() < end, "victim never reached the kill point"
        time.sleep(0.01)


@contextlib.contextmanager
def _fifo_in_place_of(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    try:
        yield data
    finally:
        path.unlink()
        path.write_bytes(data)


def _kill_mid_read(code: str, fifo: Path, data: bytes, until: Callable[[], bool]) -> None:
    """Start a victim running *code* that reads *fifo*, feed it *data*, and SIGKILL it once
    *until* holds (the victim is killed in any case)."""
    proc = _victim(code)
    try:
        fd = os.open(fifo, os.O_WRONLY)
        try:
            os.write(fd, data)
            _wait_for(until, proc)
            _kill(proc)  # before the write end closes: EOF would let the victim clean up
        finally:
            os.close(fd)
    finally:
        if proc.poll() is None:
            _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _check_blobs_whole(store: Store) -> None:
    for digest in store.blobs.list():
        assert store.blobs.get(digest)  # verifies digest and size


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_import_killed_mid_blob(tmp_path: Path) -> None:
    digests = write_oci_layout(tmp_path / "src", [Image("big:1", [BASE, BIG])])
    manifest = json.loads((tmp_path / "src/blobs/sha256" / digests["big:1"][7:]).read_bytes())
    big_digest = manifest["layers"][1]["digest"]
    root = tmp_path / "store"
    Store.open(root)
    fifo = tmp_path / "src/blobs/sha256" / big_digest[7:]
    with _fifo_in_place_of(fifo) as data:
        _kill_mid_read(
            "from layerfs.store.store import Store\n"
            f"Store.open({str(root)!r}).import_path({str(tmp_path / 'src')!r})\n",
            fifo,
            data[: len(data) // 2],
            lambda: any((root / "tmp").glob("blob-*")),
        )
    assert any((root / "tmp").iterdir()), "the kill left its staging file behind"
    store = Store.open(root)
    assert list(store.layout.tmp_dir.iterdir()) == [], "open sweeps tmp"
    assert store.images() == []
    assert not store.blobs.exists(big_digest)
    _check_blobs_whole(store)
    (image,) = store.import_path(tmp_path / "src")
    assert len(store.layer_dirs(image)) == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unpack_killed_mid_layer(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "src", [Image("big:1", [BIG])])
    root = tmp_path / "store"
    store = Store.open(root)
    (image,) = store.import_path(tmp_path / "src")
    target = store.layout.layer_dir(image.diff_ids[0])

    def partial_files() -> bool:
        return any(p.is_file() for p in (root / "tmp").glob("layer-*/.layer.partial-*/data/*"))

    fifo = store.blobs.path(image.layers[0].digest)
    with _fifo_in_place_of(fifo) as data:
        _kill_mid_read(
            "from layerfs.store.store import Store\n"
            f"s = Store.open({str(root)!r})\n"
            "s.layer_dirs(s.resolve('big:1'))\n",
            fifo,
            data[: len(data) * 3 // 4],
            partial_files,
        )
    assert not target.exists(), "a half-unpacked layer never appears under layers/"
    store = Store.open(root)
    assert list(store.layout.tmp_dir.iterdir()) == []
    (layer,) = store.layer_dirs(store.resolve("big:1"))
    assert len(os.listdir(layer / "data")) == 40


_KILL_AT = """
import os, signal
from layerfs.store import containers, populate
from layerfs.store.store import Store

def kill_after(module, name, calls):
    real = getattr(module, name)
    seen = []

    def wrapper(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)
"""


def _create_killed(root: Path, patch: str) -> None:
    """Run ``create_container`` with a named volume over /data in a victim that SIGKILLs
    itself at the point *patch* sets up (no timing involved)."""
    proc = _victim(
        _KILL_AT + patch + f"\nStore.open({str(root)!r}).create_container("
        "'big:1', 'box', volumes=['db:/data'])\n"
    )
    proc.wait(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "patch",
    [
        "kill_after(populate, '_copy_file', 10)",  # in the middle of the first copy
        "kill_after(containers.ContainerStore, 'create', 0)",  # after it, before the record
    ],
)
def test_create_killed_leaves_volumes_empty_or_whole(tmp_path: Path, patch: str) -> None:
    write_oci_layout(tmp_path / "src", [Image("big:1", [BIG], settings={"Volumes": {"/x": {}}})])
    root = tmp_path / "store"
    Store.open(root).import_path(tmp_path / "src")
    _create_killed(root, patch)
    store = Store.open(root)
    assert list(store.layout.tmp_dir.iterdir()) == [], "open sweeps the staging copy"
    assert store.containers() == []
    whole = sorted(f"f{i:03}" for i in range(40))
    for volume in store.volumes.list():
        assert sorted(os.listdir(volume.data)) in ([], whole), volume.name
    box = store.create_container("big:1", "box", volumes=["db:/data"])
    assert sorted(os.listdir(store.volumes.get("db").data)) == whole
    store.volumes.prune()  # what the killed create made for the image's /x, if it got there
    assert {v.name for v in store.volumes.list()} == {"db", box.mounts[1].source}
