"""podman with ``mount_program`` = layerfs, rootful and rootless (Debian's podman 4).

Both runs load an image made by the test, change lower files and directories in a container,
and check ``podman diff``, ``podman commit``, a run of the committed image, and that ``podman
rm`` leaves no mount and no layerfs daemon behind (see :mod:`tests.dropin.podman`). The expected
diff and view are what the same scenario gives with fuse-overlayfs as the mount program.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dropin.podman import (
    IMAGE,
    RUN_FLAGS,
    Podman,
    daemons_serving,
    mounts_below,
    scenario,
    write_image,
)
from tests.dropin.users import User

pytestmark = [
    pytest.mark.root,
    pytest.mark.fuse,
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

LAYERFS = Path(sys.executable).parent / "layerfs"  # this environment's console script


def _as_root(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=300, check=False
    )


@contextlib.contextmanager
def _swept(podman: Podman) -> Iterator[None]:
    """Whatever a failed run left: its daemons killed by pid, its mounts lazily unmounted."""
    try:
        yield
    finally:
        for pid in daemons_serving(podman.graphroot):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # containers-storage also bind-mounts its overlay directory onto itself
        for target in sorted(mounts_below(podman.base), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], check=False)


def test_podman_rootful(tmp_path: Path) -> None:
    # A short path: with storage paths of about 50 characters, podman 4.3 waits 20 s for
    # every container to exit (measured here; the same with fuse-overlayfs).
    base = Path(tempfile.mkdtemp(prefix="lfs-pm-"))
    podman = Podman(base, LAYERFS, _as_root)
    try:
        with _swept(podman):
            mount_table = Path("/proc/self/mountinfo").read_text
            scenario(podman, write_image(tmp_path / "image.tar"), mount_table)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_podman_rootless(unprivileged: User) -> None:
    base = unprivileged.path("containers")
    archive = write_image(base / "image.tar")
    os.chown(archive, unprivileged.uid, unprivileged.gid)

    def as_user(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return unprivileged.run(argv, env=env, check=False, timeout=300)

    podman = Podman(base, unprivileged.layerfs, as_user, rootless=True)
    with _swept(podman):
        # the mounts of rootless podman live in its own mount namespace: look there
        scenario(podman, archive, lambda: podman("unshare", "cat", "/proc/self/mountinfo"))
        _keep_id(podman, archive, unprivileged.uid, unprivileged.gid)


def _keep_id(podman: Podman, archive: Path, uid: int, gid: int) -> None:
    """--userns=keep-id: containers-storage passes uidmapping=/gidmapping= to the mount
    program. Files stored as 0 must look like 0 in the container, and a file the container
    user creates must belong to it (without the mapping, stored 0 would show as the user)."""
    podman("load", "-i", archive)
    script = "id -u; stat -c %u /data/keep; echo x > /tmp/mine; stat -c %u:%g /tmp/mine"
    out = podman("run", "--rm", "--userns=keep-id", *RUN_FLAGS, IMAGE, "sh", "-c", script)
    assert out.split() == [str(uid), "0", f"{uid}:{gid}"]
    podman("rmi", IMAGE)
