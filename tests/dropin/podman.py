"""podman with layerfs as containers-storage's mount program, in a test-own storage.

:class:`Podman` runs Debian's podman with ``CONTAINERS_STORAGE_CONF`` pointing at a storage.conf
written for the test (the snippet of ``docs/podman.md`` plus test-own storage paths) and with
its own temporary directory, so the machine's global configuration and storage are never used.
:func:`scenario` is the check both the rootful and the rootless test run: load an image made by
the test, change its files in a container, ``podman diff``, ``podman commit``, run the committed
image, ``podman rm``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.store.builders import E, Image, write_docker_archive

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "echo", "mv", "rm", "mkdir", "id", "stat", "find", "sort")
DAEMON_EXIT_WAIT = 30.0  # seconds
IMAGE = "localhost/layerfs-dropin:1"
COMMITTED = "localhost/layerfs-dropin:2"
# On a VM without systemd, cgroup v2 delegation or networking: what podman needs to run.
RUN_FLAGS = (
    "--network=none",
    "--ulimit=nofile=4096:4096",
    "--ulimit=nproc=4096:4096",
)
STORAGE_CONF = """\
[storage]
driver = "overlay"
{paths}

[storage.options.overlay]
mount_program = "{layerfs}"
"""
# Creates, modifies, deletes and renames lower files and directories.
CHANGES = """\
set -e
echo new > /data/new
echo more >> /data/keep
rm /data/old
mv /data/mv-src /data/mv-dst
mkdir /newdir
echo f > /newdir/f
rm -r /olddir
mv /rdir /rdir2
echo changed > /rdir2/x
"""
SHOW = "cd / && find data newdir rdir2 etc olddir rdir 2>/dev/null | sort; cat data/keep rdir2/x"
EXPECTED_DIFF = {
    "C /data",
    "A /data/new",
    "C /data/keep",
    "D /data/old",
    "D /data/mv-src",
    "A /data/mv-dst",
    "A /newdir",
    "A /newdir/f",
    "D /olddir",
    "D /rdir",
    "A /rdir2",
    "A /rdir2/x",
    "A /rdir2/y",
    "C /etc",
}
EXPECTED_VIEW = [
    "data",
    "data/keep",
    "data/mv-dst",
    "data/new",
    "etc",
    "etc/conf.d",
    "etc/conf.d/shown",
    "etc/hostname",  # podman's, as with any mount program
    "etc/hosts",
    "etc/motd",
    "etc/mtab",
    "newdir",
    "newdir/f",
    "rdir2",
    "rdir2/x",
    "rdir2/y",
    "keep",
    "more",
    "changed",
]


def write_image(dest: Path) -> Path:
    """A two-layer busybox image as a ``docker save`` archive; the top layer whites out a file
    and makes a directory opaque (containers-storage unpacks both as ``.wh.`` files)."""
    base = [
        E("bin", "dir"),
        E("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
        *(E(f"bin/{applet}", "symlink", target="busybox") for applet in APPLETS),
        E("etc", "dir"),
        E("etc/motd", data=b"hello\n"),
        E("etc/layer2", data=b"deleted by the top layer\n"),
        E("etc/conf.d", "dir"),
        E("etc/conf.d/hidden", data=b"hidden by the opaque top layer\n"),
        E("data", "dir"),
        E("data/keep", data=b"keep\n"),
        E("data/old", data=b"old\n"),
        E("data/mv-src", data=b"moved\n"),
        E("olddir", "dir"),
        E("olddir/a", data=b"a\n"),
        E("rdir", "dir"),
        E("rdir/x", data=b"x\n"),
        E("tmp", "dir", mode=0o1777),
    ]
    top = [
        E("rdir", "dir"),
        E("rdir/y", data=b"y\n"),
        E("etc", "dir"),
        E("etc/layer2", "whiteout"),
        E("etc/conf.d", "dir"),
        E("etc/conf.d", "opaque"),
        E("etc/conf.d/shown", data=b"shown\n"),
    ]
    write_docker_archive(dest, [Image(IMAGE, [base, top], env=["PATH=/bin"])])
    return dest


@dataclass
class Podman:
    """Runs podman against the test's storage; *runner* runs argv with an environment."""

    base: Path
    layerfs: Path
    runner: Callable[[list[str], dict[str, str]], subprocess.CompletedProcess[str]]
    rootless: bool = False

    def __post_init__(self) -> None:
        paths = f'graphroot = "{self.graphroot}"\nrunroot = "{self.base / "run"}"'
        if self.rootless:  # rootless podman reads its storage path from here instead
            paths += f'\nrootless_storage_path = "{self.graphroot}"'
        conf = STORAGE_CONF.format(paths=paths, layerfs=self.layerfs)
        self.storage_conf.write_text(conf)

    @property
    def graphroot(self) -> Path:
        return self.base / "graph"

    @property
    def storage_conf(self) -> Path:
        return self.base / "storage.conf"

    def __call__(self, *args: str | Path) -> str:
        argv = [
            "podman",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            f"--tmpdir={self.base / 'tmp'}",
            *map(str, args),
        ]
        env = {"CONTAINERS_STORAGE_CONF": str(self.storage_conf)}
        done = self.runner(argv, env)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout


def fuse_mounts_below(mountinfo: str, path: Path) -> list[str]:
    """layerfs mount points at or below *path* in the text of a ``mountinfo`` file."""
    return [t for t, fstype in _mounts(mountinfo, path) if fstype == "fuse.layerfs"]


def mounts_below(path: Path) -> list[str]:
    """Every mount point at or below *path* in this process's mount table."""
    return [t for t, _ in _mounts(Path("/proc/self/mountinfo").read_text(), path)]


def _mounts(mountinfo: str, path: Path) -> list[tuple[str, str]]:
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        target, fstype = fields[4], fields[fields.index("-") + 1]
        if target == str(path) or target.startswith(f"{path}/"):
            found.append((target, fstype))
    return found


def daemons_serving(graphroot: Path) -> list[int]:
    """Pids of live mount daemons whose options name a directory below *graphroot*."""
    pids = []
    needle = os.fsencode(str(graphroot))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            # a mount daemon keeps the command line it was started with: -o lowerdir=...
            if needle in cmdline and b"lowerdir=" in cmdline and state != "Z":
                pids.append(int(entry.name))
    return pids


def wait_no_daemons(graphroot: Path, wait: float = DAEMON_EXIT_WAIT) -> list[int]:
    """The daemons still serving *graphroot* after up to *wait* seconds (an unmounted daemon
    exits on its own, a moment after the unmount returned)."""
    deadline = time.monotonic() + wait
    while (pids := daemons_serving(graphroot)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


def scenario(podman: Podman, archive: Path, mount_table: Callable[[], str]) -> None:
    """Load, run with changes, diff, commit, run the commit, rm; check each step.

    *mount_table* returns the ``mountinfo`` of podman's mount namespace.
    """
    podman("load", "-i", archive)
    podman("run", "--name", "changer", *RUN_FLAGS, IMAGE, "sh", "-c", CHANGES)
    diff = set(podman("diff", "changer").split("\n")) - {""}
    assert diff == EXPECTED_DIFF, sorted(diff ^ EXPECTED_DIFF)
    podman("commit", "changer", COMMITTED)
    shown = podman("run", "--rm", *RUN_FLAGS, COMMITTED, "sh", "-c", SHOW)
    assert shown.split() == EXPECTED_VIEW, shown
    podman("rm", "changer")
    assert fuse_mounts_below(mount_table(), podman.graphroot) == []
    assert wait_no_daemons(podman.graphroot) == []
    podman("rmi", COMMITTED, IMAGE)
