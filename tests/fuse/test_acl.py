"""POSIX ACLs through the mount beside kernel overlayfs: checked by the kernel on access, and
inherited from a directory's default ACL by what is created in it (the umask applies only
where there is none). pyfuse3 cannot keep the umask from the mode (deviation 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from layerfs import acl
from tests.fuse.conftest import Mounter, Stackdirs
from tests.fuse.test_file_io import kernel_overlay

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.kernel, pytest.mark.timeout(120)]

NAMED_USER = 1000
GROUP_MEMBER = 2000  # not the owner, in the owning group 0
FILES: dict[str, str | bytes | None] = {"f": "lower\n", "d/old": "old\n"}


NO_ID = 0xFFFFFFFF  # what the kernel stores as the id of entries that name nobody


def _acl(owner: int, user: int, group: int, mask: int, other: int) -> bytes:
    """An ACL in xattr form: owner, the named user, owning group, mask and other."""
    entries = [
        (acl.USER_OBJ, owner, NO_ID),
        (acl.USER, user, NAMED_USER),
        (acl.GROUP_OBJ, group, NO_ID),
        (acl.MASK, mask, NO_ID),
        (acl.OTHER, other, NO_ID),
    ]
    return acl.pack([list(entry) for entry in entries])


# f: the owning group may only read, the named user may do everything
ACCESS = _acl(owner=6, user=7, group=4, mask=7, other=0)
# d: what is created inside gives the named user everything and others read and search
DEFAULT = _acl(owner=7, user=7, group=5, mask=7, other=5)


def give_acls(lower: Path) -> None:
    os.setxattr(lower / "f", acl.ACCESS, ACCESS)
    os.setxattr(lower / "d", acl.DEFAULT, DEFAULT)


OPENER = """
import os, sys
d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))
os.close(os.open(sys.argv[4], int(sys.argv[5]), dir_fd=d))
"""


def _may(uid: int, gid: int, mnt: Path, name: str, flags: int) -> bool:
    """Whether *uid*/*gid* (no supplementary groups) can open *name* below *mnt* with
    *flags* (the directories above the mount stay closed to it: it starts from a descriptor)."""
    argv = [sys.executable, "-c", OPENER, str(mnt), str(uid), str(gid), name, str(flags)]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def _acls_of(path: Path) -> tuple[str, bytes | None, bytes | None]:
    def get(name: str) -> bytes | None:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None

    return oct(os.lstat(path).st_mode), get(acl.ACCESS), get(acl.DEFAULT)


def acl_outcomes(mnt: Path) -> dict[str, object]:
    """Access by users the ACL names, then objects made with umask 022 inside and outside the
    directory with the default ACL."""
    os.chmod(mnt, 0o755)
    seen: dict[str, object] = {
        "group member writes f": _may(GROUP_MEMBER, 0, mnt, "f", os.O_WRONLY),
        "named user reads f": _may(NAMED_USER, NAMED_USER, mnt, "f", os.O_RDONLY),
        "named user writes d/old": _may(NAMED_USER, NAMED_USER, mnt, "d/old", os.O_WRONLY),
    }
    old = os.umask(0o022)
    try:
        made: dict[str, Callable[[Path], object]] = {
            "new": lambda p: p.write_text("x"),
            "sub": lambda p: p.mkdir(0o777),
            "fifo": lambda p: os.mkfifo(p, 0o666),
        }
        for name, make in made.items():
            make(mnt / "d" / name)
            make(mnt / name)
    finally:
        os.umask(old)
    for name in ("f", "d", "d/new", "d/sub", "d/fifo", "new", "sub", "fifo"):
        seen[name] = _acls_of(mnt / name)
    return seen


def test_acls_are_checked_and_inherited_as_on_the_kernel(
    mounter: Mounter, tmp_path: Path, fuse_backend: str
) -> None:
    with kernel_overlay(tmp_path / "k", FILES, prepare=give_acls) as kmnt:
        kernel = acl_outcomes(kmnt)
    assert kernel["group member writes f"] is False and kernel["named user reads f"] is True
    # mkdir(0777) in d takes d's default ACL as it is, and the umask does not apply
    assert kernel["d/sub"] == ("0o40775", DEFAULT, DEFAULT)
    assert kernel["sub"] == ("0o40755", None, None)
    dirs: Stackdirs = mounter.layers(FILES)
    give_acls(dirs.lowers[0])
    seen = acl_outcomes(mounter.mount(dirs, "-o", "allow_other"))
    if fuse_backend == "native":
        assert seen == kernel
    else:  # checked as on the kernel; inside d the umask narrows what d's default ACL gives
        inherited = {"d/new", "d/sub", "d/fifo"}
        assert {k: v for k, v in seen.items() if k not in inherited} == {
            k: v for k, v in kernel.items() if k not in inherited
        }
        for name in inherited:
            assert seen[name][0] == oct(int(str(kernel[name][0]), 8) & ~0o022), name


def test_without_a_default_acl_the_umask_applies(mounter: Mounter) -> None:
    mnt = mounter.mount(mounter.layers(FILES))
    old = os.umask(0o027)
    try:
        (mnt / "plain").write_text("x")
        (mnt / "plaindir").mkdir(0o777)
    finally:
        os.umask(old)
    assert _acls_of(mnt / "plain") == ("0o100640", None, None)
    assert _acls_of(mnt / "plaindir") == ("0o40750", None, None)


def test_noacl_leaves_access_to_the_mode_bits(mounter: Mounter) -> None:
    """``-o noacl`` (fuse-overlayfs's option): ACLs stay data, the kernel checks the mode bits
    alone (whose group bits are the mask) and applies the umask."""
    dirs = mounter.layers(FILES)
    give_acls(dirs.lowers[0])
    seen = acl_outcomes(mounter.mount(dirs, "-o", "allow_other,noacl"))
    assert seen["group member writes f"] is True and seen["named user reads f"] is False
    assert seen["d/sub"][0] == "0o40755"
