"""Fixtures for real FUSE mounts: build layers, mount through the CLI, always unmount.

Every mount made here is taken down in teardown even when the test failed: first with
``layerfs umount``, then with a lazy unmount and SIGKILL of the daemon if that did not work.
A session fixture then checks that no FUSE or overlay mount is left below the test tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fuse_mount import daemon, mountinfo

CLI = [sys.executable, "-c", "from layerfs.cli.main import main; main()"]
CLI_TIMEOUT = 60  # seconds for one CLI call (mount waits for the daemon to be ready)
BACKENDS = ("native", "pyfuse3")
_current: dict[str, str] = {}  # the session backend of the running test, when it has one


CAPABILITY = "security.capability"
# cap_net_raw=ep, as setcap(8) writes it (VFS_CAP_REVISION_2 with the effective bit)
CAP_NET_RAW_EP = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)


@pytest.fixture(params=BACKENDS, autouse=True)
def fuse_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test of this directory runs once per session backend; ``layerfs mount`` calls
    made through :func:`run_cli` get ``-o backend=NAME``."""
    _current["backend"] = request.param
    try:
        yield request.param
    finally:
        _current.clear()


def backend_args(args: tuple[str, ...]) -> list[str]:
    """*args* of a ``layerfs`` call, with the running test's backend for a mount."""
    if args and args[0] == "mount" and "backend" in _current:
        return [*args, "-o", f"backend={_current['backend']}"]
    return list(args)


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``layerfs ARGS`` in a subprocess, as a user would."""
    done = subprocess.run(
        [*CLI, *backend_args(args)], capture_output=True, text=True, timeout=CLI_TIMEOUT,
        check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"layerfs {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def write_tree(root: Path, files: dict[str, str | bytes | None]) -> Path:
    """Create *files* under *root*: ``str``/``bytes`` is a file, ``None`` a directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
    return root


def force_unmount(mountpoint: Path) -> None:
    """Last resort for teardown: lazy unmount and kill the daemon that served *mountpoint*."""
    owner = daemon.read_pidfile(daemon.pidfile_path(mountpoint))
    if mountinfo.find(mountpoint) is not None:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
    if owner is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(owner[0], signal.SIGKILL)


@dataclass
class Stackdirs:
    """The directories of one test stack."""

    base: Path
    lowers: list[Path] = field(default_factory=list)
    upper: Path | None = None
    work: Path | None = None
    mnt: Path | None = None

    def mount_args(self) -> list[str]:
        args = ["--lower", ":".join(str(p) for p in self.lowers)]
        if self.upper is not None and self.work is not None:
            args += ["--upper", str(self.upper), "--work", str(self.work)]
        return args


class Mounter:
    """Mounts stacks through ``layerfs mount`` and unmounts all of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounted: list[Path] = []
        self._count = 0

    def layers(
        self, *lowers: dict[str, str | bytes | None], upper: bool = True, name: str = ""
    ) -> Stackdirs:
        """Lower layers from *lowers* (top-most first), plus empty upper and work dirs."""
        self._count += 1
        base = self.tmp_path / (name or f"stack{self._count}")
        dirs = Stackdirs(base=base)
        for i, files in enumerate(lowers):
            dirs.lowers.append(write_tree(base / f"lower{i}", files))
        if upper:
            dirs.upper = write_tree(base / "upper", {})
            dirs.work = write_tree(base / "work", {})
        dirs.mnt = write_tree(base / "mnt", {})
        return dirs

    def mount(self, dirs: Stackdirs, *extra: str) -> Path:
        assert dirs.mnt is not None
        self.mounted.append(dirs.mnt)
        run_cli("mount", *dirs.mount_args(), *extra, str(dirs.mnt))
        assert mountinfo.find(dirs.mnt) is not None
        return dirs.mnt

    def unmount(self, mnt: Path) -> None:
        run_cli("umount", str(mnt))
        self.mounted.remove(mnt)

    def cleanup(self) -> None:
        for mnt in self.mounted:
            if mountinfo.find(mnt) is None:
                continue
            done = run_cli("umount", str(mnt), check=False)
            if done.returncode != 0:
                force_unmount(mnt)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture(scope="session", autouse=True)
def no_mounts_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the suite, nothing may still be mounted below the test tree."""
    yield
    base = Path(os.path.realpath(tmp_path_factory.getbasetemp()))
    left = [
        e for e in mountinfo.under(base) if e.fstype.startswith("fuse") or e.fstype == "overlay"
    ]
    for entry in left:
        force_unmount(entry.mountpoint)
    assert not left, f"mounts left behind: {[str(e.mountpoint) for e in left]}"
