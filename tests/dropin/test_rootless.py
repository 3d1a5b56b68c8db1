"""Rootless: an ordinary user mounts through fusermount3, and uid 0 of a user namespace is not root.

Either way the upper gets the forms an unprivileged process can write (``user.overlay.*``
xattrs; whiteouts as 0/0 devices where the user can make them, found by a probe, else ``.wh.``
files), pid files go to the user's runtime directory, and the daemon leaves with the mount.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from layerfs import whiteout
from tests.dropin.mounts import mounted, read_pid, wait_gone
from tests.dropin.users import User
from tests.fuse.conftest import CAP_NET_RAW_EP, write_tree

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


def _stack(user: User, name: str) -> tuple[Path, Path, Path, Path]:
    """Lower, upper, work and mount point, owned by *user* (its own image, as rootless)."""
    base = user.path(name)
    lower = write_tree(base / "lower", {"gone": "g", "kept": "k", "dir/old": "o", "dir/sub": None})
    for directory in ("upper", "work", "mnt"):
        (base / directory).mkdir()
    for path in [base, *base.rglob("*")]:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
    return lower, base / "upper", base / "work", base / "mnt"


def _probed_style(user: User, directory: Path) -> str:
    """What the probe finds when the user runs it in *directory* (never guessed)."""
    code = "import sys; from layerfs.privilege import whiteout_style_for as p; "
    code += "print(p(__import__('pathlib').Path(sys.argv[1])).value)"
    return user.run([user.python, "-c", code, directory]).stdout.strip()


def _private_xattrs(path: Path) -> list[str]:
    return [n for n in os.listxattr(path, follow_symlinks=False) if whiteout.is_private_xattr(n)]


def test_unprivileged_user_mounts_through_fusermount3(unprivileged: User) -> None:
    lower, upper, work, mnt = _stack(unprivileged, "plain")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    unprivileged.run([unprivileged.layerfs, "-o", options, mnt])
    try:
        entry = mounted(mnt)
        assert entry is not None and f"user_id={unprivileged.uid}" in entry.super_options
        assert "allow_other" not in entry.super_options  # fusermount3 would refuse it
        pidfiles = list((unprivileged.runtime_dir / f"layerfs-{unprivileged.uid}").iterdir())
        assert len(pidfiles) == 1
        owner = read_pid(pidfiles[0])
        script = "rm gone && rm -r dir && mkdir dir && echo new > dir/new && echo more >> kept"
        unprivileged.run(["sh", "-ec", script], cwd=mnt)
    finally:
        unprivileged.run(["fusermount3", "-u", mnt], check=False)
    assert mounted(mnt) is None
    assert wait_gone(*owner)
    assert list(pidfiles[0].parent.iterdir()) == []  # the daemon took its pid file along
    style = _probed_style(unprivileged, work)
    if style == "chardev":
        assert (upper / "gone").is_char_device() and (upper / "gone").stat().st_rdev == 0
    else:
        assert (upper / ".wh.gone").is_file()
    assert "user.overlay.opaque" in _private_xattrs(upper / "dir")
    written = {name for p in [upper, *upper.rglob("*")] for name in _private_xattrs(p)}
    assert all(name.startswith(whiteout.USER_PREFIX) for name in written), written
    assert (upper / "kept").read_text() == "kmore\n"


def test_whiteout_files_by_option_are_read_back(unprivileged: User) -> None:
    lower, upper, work, mnt = _stack(unprivileged, "whfile")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    unprivileged.run([unprivileged.layerfs, "-o", f"{options},whiteout=wh-file", mnt])
    try:
        unprivileged.run(["rm", "gone"], cwd=mnt)
    finally:
        unprivileged.run(["fusermount3", "-u", mnt], check=False)
    assert (upper / ".wh.gone").is_file() and not (upper / "gone").exists()
    unprivileged.run([unprivileged.layerfs, "-o", options, mnt])
    try:
        listing = unprivileged.run(["ls", "-A"], cwd=mnt).stdout.split()
    finally:
        unprivileged.run(["fusermount3", "-u", mnt], check=False)
    assert sorted(listing) == ["dir", "kept"]


def test_uid_0_of_a_user_namespace_is_not_root(unprivileged: User) -> None:
    lower, upper, _, _ = _stack(unprivileged, "userns")
    base = lower.parent
    shutil.rmtree(lower / "dir" / "sub")
    argv = [unprivileged.python, "-m", "tests.dropin.userns_mount", unprivileged.layerfs, base]
    done = unprivileged.run(argv, userns=True, cwd=unprivileged.src)
    report = json.loads(done.stdout)
    assert report["euid"] == 0 and report["uid_map"][0] == [0, unprivileged.uid, 1]
    assert report["privileged"] is False
    expected_dir = unprivileged.runtime_dir / f"layerfs-{unprivileged.uid}"
    assert report["runtime_dir"] == str(expected_dir)
    assert Path(report["pidfile"]).parent == expected_dir
    assert "allow_other" in report["super_options"]  # fuse-overlayfs's default for uid 0
    assert report["owned"] == [1000, 1000]  # a mapped id: chown works in the namespace
    assert report["daemon_gone"] and not report["pidfile_left"]
    assert report["kept"] == "k" and report["log_warnings"] == []  # no passthrough tried
    upper_report = report["upper"]
    assert "user.overlay.opaque" in upper_report["dir"]["xattrs"]
    assert not any(n.startswith("trusted.") for e in upper_report.values() for n in e["xattrs"])
    assert upper_report["gone"]["chardev"] or ".wh.gone" in upper_report
    assert upper_report["owned"]["owner"] == [1000, 1000]
    # seen from outside, the namespace's 1000 is one of the user's subordinate ids
    assert (upper / "owned").stat().st_uid not in (0, 1000, unprivileged.uid)


def _chmod_of_a_capable_file(user: User, program: str, name: str) -> tuple[int, Path]:
    """chmod through a rootless mount by *program* of a lower file that carries file
    capabilities; its exit status and the upper."""
    lower, upper, work, mnt = _stack(user, name)
    shutil.copy("/bin/true", lower / "ping")
    os.chown(lower / "ping", user.uid, user.gid)
    os.setxattr(lower / "ping", "security.capability", CAP_NET_RAW_EP)  # after the chown
    user.run([program, "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", mnt])
    try:
        done = user.run(["chmod", "4755", mnt / "ping"], check=False)
        code = "import os, sys; print(os.getxattr(sys.argv[1], 'security.capability').hex())"
        shown = user.run([user.python, "-c", code, mnt / "ping"]).stdout.strip()
        assert shown == CAP_NET_RAW_EP.hex()  # still the lower's
    finally:
        user.run(["fusermount3", "-u", mnt], check=False)
    return done.returncode, upper


def test_a_file_with_capabilities_is_not_copied_up_without_privilege(unprivileged: User) -> None:
    """Writing ``security.capability`` takes CAP_SETFCAP, which a rootless daemon lacks: the
    copy-up fails with EPERM and leaves nothing, as with fuse-overlayfs (deviation 14)."""
    status, upper = _chmod_of_a_capable_file(unprivileged, unprivileged.layerfs, "caps")
    assert status != 0 and list(upper.iterdir()) == []
    if shutil.which("fuse-overlayfs") is not None:
        peer, _ = _chmod_of_a_capable_file(unprivileged, "fuse-overlayfs", "caps-peer")
        assert peer == status
