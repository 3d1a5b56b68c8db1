"""mount(8) and fstab through mount.fuse3, with layerfs installed by ``make install``.

util-linux's mount drops PATH from the environment before it runs ``/sbin/mount.fuse3``, which
runs ``layerfs SOURCE MNT -o OPTS`` through ``/bin/sh``; dash then searches its built-in PATH
(``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``). So the test installs the
way the README says, ``make install`` (a ``layerfs`` link in ``/usr/local/bin``), and puts back
whatever was there before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuse_mount import daemon, mountinfo
from tests.dropin.mounts import mounted, read_pid, wait_gone
from tests.fuse.conftest import Mounter, Stackdirs

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.timeout(120)]

CHECKOUT = Path(__file__).resolve().parents[2]
INSTALLED = Path("/usr/local/bin/layerfs")
HELPER = Path("/sbin/mount.fuse.layerfs")
MINIMAL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@pytest.fixture
def installed() -> Iterator[Path]:
    """``make install`` for the test's duration; an earlier /usr/local/bin/layerfs is restored."""
    if HELPER.exists():
        pytest.skip(f"{HELPER} is installed: mount(8) would run it instead of mount.fuse3")
    if Path(sys.executable).parent != CHECKOUT / ".venv" / "bin":
        pytest.skip("make install links this checkout's .venv, which is not the running one")
    saved = INSTALLED.with_name(f".layerfs-saved-{os.getpid()}")
    had = INSTALLED.exists() or INSTALLED.is_symlink()
    if had:
        INSTALLED.rename(saved)
    try:
        subprocess.run(
            ["make", "-s", "-C", str(CHECKOUT), "install"], check=True, capture_output=True
        )
        assert INSTALLED.resolve() == (CHECKOUT / ".venv" / "bin" / "layerfs").resolve()
        yield INSTALLED
    finally:
        INSTALLED.unlink(missing_ok=True)
        if had:
            saved.rename(INSTALLED)


def _mount(*args: str) -> None:
    # from /: mount(8) turns a SOURCE that names a path in its cwd into that path
    done = subprocess.run(
        ["mount", *args],
        capture_output=True,
        text=True,
        env=MINIMAL_ENV,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _umount_leaves_no_daemon(mnt: Path) -> None:
    owner = read_pid(daemon.pidfile_path(mnt))
    subprocess.run(["umount", str(mnt)], check=True, env=MINIMAL_ENV)
    assert mountinfo.find(mnt) is None
    assert wait_gone(*owner), f"daemon {owner[0]} still runs after umount"


def _options(dirs: Stackdirs) -> str:
    lowers = ":".join(str(p) for p in dirs.lowers)
    return f"lowerdir={lowers},upperdir={dirs.upper},workdir={dirs.work}"


def _check_and_unmount(mounter: Mounter, dirs: Stackdirs, source: str) -> None:
    assert dirs.mnt is not None and dirs.upper is not None
    entry = mounted(dirs.mnt)
    assert entry is not None and entry.fstype == "fuse.layerfs"
    assert entry.source == source
    assert (dirs.mnt / "f").read_text() == "x"
    (dirs.mnt / "new").write_text("via mount(8)")
    (dirs.mnt / "f").unlink()
    _umount_leaves_no_daemon(dirs.mnt)
    mounter.mounted.remove(dirs.mnt)
    assert (dirs.upper / "new").read_text() == "via mount(8)"
    assert (dirs.upper / "f").stat().st_rdev == 0  # a whiteout


def test_mount_t_fuse_layerfs(mounter: Mounter, installed: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    assert dirs.mnt is not None
    mounter.mounted.append(dirs.mnt)
    _mount("-t", "fuse.layerfs", "layerfs", str(dirs.mnt), "-o", _options(dirs))
    _check_and_unmount(mounter, dirs, "layerfs")


def test_fstab_line(mounter: Mounter, installed: Path, tmp_path: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    assert dirs.mnt is not None
    fstab = tmp_path / "fstab"
    generic = "noauto,nofail,_netdev,x-systemd.automount,noatime,nodev"
    fstab.write_text(f"myimage {dirs.mnt} fuse.layerfs {_options(dirs)},{generic} 0 0\n")
    mounter.mounted.append(dirs.mnt)
    _mount("--fstab", str(fstab), str(dirs.mnt))
    entry = mounted(dirs.mnt)
    assert entry is not None and {"noatime", "nodev"} <= entry.options
    _check_and_unmount(mounter, dirs, "myimage")


def test_install_target_puts_layerfs_on_the_shells_own_path(installed: Path) -> None:
    """What mount.fuse3's shell finds without PATH is the installed checkout."""
    done = subprocess.run(
        ["env", "-i", "/bin/sh", "-c", "command -v layerfs"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == installed
    assert shutil.which("mount.fuse3", path="/sbin:/usr/sbin") is not None
