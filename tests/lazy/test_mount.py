"""Mounting images and containers that were pulled lazily: before their blobs are local.

Images in both formats (skopeo's zstd:chunked, ctr-remote's eStargz) are pulled with
``layerfs pull --lazy`` from a registry on 127.0.0.1 and mounted at once: programs run in the
mount with ``chroot`` and ``runc``, the tree equals ``umoci unpack``'s, and background
completion runs with the mount (files then open from the unpacked layer). A range response
cut off midway is fetched again within the read. Faults between the mount and the registry
(the registry killed, stalling, corrupting every response) fail the reads that need the
registry with EIO (``--fetch-timeout`` bounds them: the benchmark measures it), while the rest
of the mount keeps answering, with one line in the daemon's log; later reads work again, and
a chunk that does not match its digest is never served.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuse_mount import daemon, mountinfo
from layerfs.lazy.remote import FAIL_FAST
from layerfs.store import Store
from tests.fuse.conftest import force_unmount, run_cli
from tests.registry.servers import FaultProxy, RegistryServer
from tests.treedesc import host_tree

from .conftest import Images
from .tools import sh

pytestmark = [
    pytest.mark.network,
    pytest.mark.root,
    pytest.mark.fuse,
    pytest.mark.interop,
    pytest.mark.timeout(300),
]

FORMS = ["zstd_chunked", "estargz"]
FETCH_TIMEOUT = 5.0  # seconds: --fetch-timeout of the fault test
HANG_GUARD = 3 * FETCH_TIMEOUT + 10  # seconds after which a read counts as hung


class Mounts:
    """Mounts made through the CLI, every one unmounted at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounted: list[Path] = []

    def mount(self, root: Path, source: str, *extra: str, name: str = "mnt") -> Path:
        mnt = self.tmp_path / name
        mnt.mkdir(exist_ok=True)
        self.mounted.append(mnt)
        run_cli("mount", "--root", str(root), *extra, source, str(mnt))
        assert mountinfo.find(mnt) is not None
        return mnt

    def unmount(self, mnt: Path) -> None:
        run_cli("umount", str(mnt))
        self.mounted.remove(mnt)

    def cleanup(self) -> None:
        for mnt in self.mounted:
            if (
                mountinfo.find(mnt) is not None
                and run_cli("umount", str(mnt), check=False).returncode
            ):
                force_unmount(mnt)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    made = Mounts(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def lazy_pull(root: Path, ref: str, *extra: str) -> None:
    run_cli("pull", "--lazy", "--insecure", "-q", "--root", str(root), *extra, ref)


def fetched(root: Path, ref: str) -> int:
    """Bytes of the image's layer blobs in the store so far."""
    store = Store.open(root)
    image = store.resolve(ref)
    return store.local_bytes(image) - image.manifest.config.size


@pytest.mark.parametrize(
    ("form", "backend"),
    [("zstd_chunked", "native"), ("estargz", "native"), ("zstd_chunked", "pyfuse3")],
)
def test_image_mounts_before_it_is_downloaded_and_runs_programs(
    images: Images, mounts: Mounts, tmp_path: Path, form: str, backend: str
) -> None:
    ref = getattr(images, form)
    root = tmp_path / "store"
    lazy_pull(root, ref, "--no-prefetch")
    mnt = mounts.mount(root, ref, "-o", f"backend={backend}")
    assert fetched(root, ref) == 0  # the mount is up: names come from the TOCs
    assert sorted(os.listdir(mnt / "data")) == sorted(os.listdir(images.rootfs / "data"))
    out = sh("chroot", mnt, "/bin/sh", "-c", "busybox cat /etc/motd; echo $((6 * 7))")
    assert out == (images.rootfs / "etc/motd").read_text() + "42\n"
    big = (images.rootfs / "data/big").stat().st_size
    assert 0 < fetched(root, ref) < Store.open(root).resolve(ref).size - big
    small = (images.rootfs / "data/small-6").read_bytes()
    with open(mnt / "data/small-6", "rb") as first:  # read through the TOC
        assert first.read() == small
        with open(mnt / "data/small-6", "rb") as again:  # now a host file: same inode
            assert again.read() == small
    assert host_tree(mnt) == host_tree(images.unpacked(form))
    mounts.unmount(mnt)
    order = Store.open(root).lazy.read_order(Store.open(root).resolve(ref).layers[0].digest)
    assert "/bin/busybox" in order  # recorded: the next completion fetches it first


def test_container_over_a_lazy_image_completes_while_mounted(
    images: Images, mounts: Mounts, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    lazy_pull(root, images.zstd_chunked)
    run_cli("create", "--root", str(root), "--name", "box", images.zstd_chunked)
    assert fetched(root, images.zstd_chunked) == 0  # created without downloading
    mnt = mounts.mount(root, "box")
    script = "echo hi > /hello && busybox rm /etc/motd.link && echo more >> /data/small-8"
    sh("chroot", mnt, "/bin/sh", "-c", script)  # the last one copies a partial file up
    store = Store.open(root)
    image = store.resolve(images.zstd_chunked)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(store.layout.layer_dir(d).is_dir() for d in image.diff_ids):
            break  # background completion ran with the mount, and unpacked every layer
        time.sleep(0.2)
    assert store.lazy.records() == []
    assert all(store.layout.layer_dir(d).is_dir() for d in image.diff_ids)
    with open(mnt / "data" / "small-9", "rb") as opened:
        assert opened.read() == (images.rootfs / "data/small-9").read_bytes()
        owner = daemon.read_pidfile(daemon.pidfile_path(mnt))
        assert owner is not None
        held = [
            os.readlink(f"/proc/{owner[0]}/fd/{fd}") for fd in os.listdir(f"/proc/{owner[0]}/fd")
        ]
        assert any(h.startswith(str(root / "layers")) and h.endswith("/data/small-9") for h in held)
    small = (images.rootfs / "data/small-8").read_bytes()
    assert (mnt / "data/small-8").read_bytes() == small + b"more\n"
    mounts.unmount(mnt)
    diff = run_cli("diff", "--root", str(root), "box").stdout.split("\n")
    assert "A /hello" in diff and "D /etc/motd.link" in diff and "C /data/small-8" in diff
    assert all(isinstance(p, Path) for p in store.mount_spec("box").lowers)


@pytest.mark.skipif(not shutil.which("runc"), reason="needs runc")
def test_runc_runs_a_bundle_of_a_lazy_image(images: Images, mounts: Mounts, tmp_path: Path) -> None:
    root = tmp_path / "store"
    lazy_pull(root, images.estargz, "--no-prefetch")
    run_cli("create", "--root", str(root), "--name", "box", images.estargz)
    bundle = tmp_path / "bundle"
    script = "busybox cat /etc/motd; echo written > /out"
    mounts.mounted.append(bundle / "rootfs")
    run_cli("bundle", "--root", str(root), "box", str(bundle), "--", "/bin/sh", "-c", script)
    name = f"layerfs-lazy-{os.getpid()}-{random.randrange(1 << 30)}"
    done = subprocess.run(
        ["runc", "run", "--bundle", str(bundle), name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (images.rootfs / "etc/motd").read_text()
    assert (bundle / "rootfs" / "out").read_text() == "written\n"
    mounts.unmount(bundle / "rootfs")


def read_in_thread(path: Path) -> tuple[threading.Thread, list[bytes | OSError]]:
    """Start reading *path* whole in a thread; the list gets the data or the error."""
    result: list[bytes | OSError] = []

    def read() -> None:
        try:
            result.append(path.read_bytes())
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, result


def read_ends(path: Path) -> bytes | OSError:
    """Read *path* whole: the data or the error; the read must end (a hang guard far above
    the fetch timeout, not a measurement: the benchmark measures how long it takes)."""
    thread, result = read_in_thread(path)
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"reading {path} hangs"
    return result[0]


def fails_with_eio(path: Path) -> None:
    result = read_ends(path)
    assert isinstance(result, OSError) and result.errno == errno.EIO, result


def reads_again(path: Path, expected: bytes) -> None:
    """Reads of *path* work again once the registry answers (the first ones right after a
    failure fail at once)."""
    for _ in range(int(HANG_GUARD / 0.5)):
        if read_ends(path) == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{path} cannot be read again")


def test_registry_faults_fail_reads_with_eio_and_reads_recover(
    images: Images, mounts: Mounts, tmp_path: Path
) -> None:
    root, log = tmp_path / "store", tmp_path / "daemon.log"
    rootfs = images.rootfs
    with RegistryServer(tmp_path / "own-registry") as own, FaultProxy(own.port) as proxy:
        ref = f"{proxy.host}/lazy/app:z"
        sh("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{images.zstd_chunked}", f"docker://{own.host}/lazy/app:z")  # fmt: skip
        lazy_pull(root, ref, "--no-prefetch")
        timeout = str(FETCH_TIMEOUT)
        mnt = mounts.mount(root, ref, "--fetch-timeout", timeout, "--log", str(log))

        proxy.arm(drop_after_down=20_000)  # a range response cut off: retried within the read
        assert (mnt / "data/big").read_bytes() == (rootfs / "data/big").read_bytes()
        assert proxy.dropped.is_set()
        proxy.disarm()

        own.kill()  # the registry is gone: reads of what is not local fail, nothing else
        fails_with_eio(mnt / "data/small-1")
        fails_with_eio(mnt / "data/small-2")
        assert (mnt / "etc/motd").stat().st_size == (rootfs / "etc/motd").stat().st_size
        lines = [line for line in log.read_text().splitlines() if "range reads from" in line]
        assert len(lines) == 1, log.read_text()
        own.start()  # later reads retry
        reads_again(mnt / "data/small-1", (rootfs / "data/small-1").read_bytes())
        assert "work again" in log.read_text().splitlines()[-1]

        proxy.arm(stall_after_down=0)  # the registry stalls: that read waits, the mount answers
        reader, stalled = read_in_thread(mnt / "data/small-3")
        time.sleep(0.5)
        assert sorted(os.listdir(mnt / "data")) == sorted(os.listdir(rootfs / "data"))
        assert (mnt / "data/small-1").read_bytes() == (rootfs / "data/small-1").read_bytes()
        assert reader.is_alive()  # the stalled read was still waiting meanwhile
        reader.join(HANG_GUARD)
        assert stalled and isinstance(stalled[0], OSError) and stalled[0].errno == errno.EIO

        time.sleep(FAIL_FAST)
        proxy.arm(corrupt_down_all=True)  # every answer is corrupt: never served
        fails_with_eio(mnt / "data/small-4")
        assert proxy.corrupted.is_set()
        proxy.disarm()
        reads_again(mnt / "data/small-4", (rootfs / "data/small-4").read_bytes())
        reads_again(mnt / "data/small-3", (rootfs / "data/small-3").read_bytes())
        store = Store.open(root)
        assert all(store.lazy.chunks.get(d) is not None for d in store.lazy.chunks.list())
        mounts.unmount(mnt)
