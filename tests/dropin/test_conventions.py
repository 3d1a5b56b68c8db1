"""``layerfs -o OPTS MNT``, ``layerfs SOURCE MNT -o OPTS``: fuse-overlayfs's calling conventions."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuse_mount import daemon, mountinfo
from fuse_mount.options import sort_mount_options
from layerfs.cli.dropin import DropinCall, UsageError, default_items, is_dropin_call, parse_args
from layerfs.options import split_option_list
from tests.dropin.mounts import mounted, read_pid, wait_gone
from tests.fuse.conftest import Mounter, Stackdirs

LAYERFS = Path(sys.executable).parent / "layerfs"  # the console script of this environment
COMMANDS = {"mount", "umount", "images", "import"}
SELINUX_LABEL = 'context="system_u:object_r:container_file_t:s0:c1022,c1023"'


class TestWhichConvention:
    @pytest.mark.parametrize(
        "argv",
        [
            ["-o", "lowerdir=/a", "/m"],  # containers-storage
            ["-olowerdir=/a", "/m"],
            ["layerfs", "/m", "-o", "lowerdir=/a"],  # mount.fuse3
            ["--debug", "-o", "lowerdir=/a", "/m"],
            ["-f", "-o", "lowerdir=/a", "/m"],
            ["myimage", "/m"],
        ],
    )
    def test_fuse_program_calls(self, argv: list[str]) -> None:
        assert is_dropin_call(argv, COMMANDS)

    @pytest.mark.parametrize(
        "argv",
        [[], ["--help"], ["-h"], ["--version"], ["mount", "/m"], ["--debug", "umount", "/m"]],
    )
    def test_subcommands_and_help_win(self, argv: list[str]) -> None:
        assert not is_dropin_call(argv, COMMANDS)


class TestArguments:
    def test_containers_storage_call(self) -> None:
        call = parse_args(["-o", "lowerdir=/l,upperdir=/u,workdir=/w,,volatile", "/m"])
        assert call == DropinCall(
            None, Path("/m"), ["lowerdir=/l", "upperdir=/u", "workdir=/w", "volatile"]
        )

    def test_mount_fuse3_call(self) -> None:
        call = parse_args(["img", "/m", "-o", "rw,lowerdir=/l,dev,suid", "-o", "noatime"])
        assert (call.source, call.mountpoint) == ("img", Path("/m"))
        assert call.items == ["rw", "lowerdir=/l", "dev", "suid", "noatime"]

    def test_flags(self) -> None:
        call = parse_args(["-f", "-s", "-olowerdir=/l", "/m"])
        assert call.foreground and not call.debug
        call = parse_args(["-d", "-olowerdir=/l", "/m"])
        assert call.foreground and call.debug

    @pytest.mark.parametrize("argv", [["-o", "x"], ["a", "b", "c"], ["-q", "/m"], []])
    def test_usage_errors(self, argv: list[str]) -> None:
        with pytest.raises(UsageError):
            parse_args(argv)

    def test_fuse_overlayfs_defaults(self) -> None:
        expected = ["allow_other", "suid", "noatime"] if os.geteuid() == 0 else ["noatime"]
        assert default_items() == expected


class TestOptions:
    def test_selinux_label_stays_one_option_and_is_ignored(self) -> None:
        items = split_option_list(f"lowerdir=/l,{SELINUX_LABEL},noacl")
        assert items == ["lowerdir=/l", SELINUX_LABEL, "noacl"]
        assert sort_mount_options(items)[1] == ["lowerdir=/l"]

    def test_fuse_overlayfs_options(self) -> None:
        items = ["lowerdir=/l", "xino=off", "threaded=1", "fast_ino=1", "writeback=0"]
        items += ["redirect_dir=off", "fsync=1", "noacl"]
        assert sort_mount_options(items)[1] == ["lowerdir=/l"]
        assert sort_mount_options(items)[0].acl is False  # as in fuse-overlayfs: no ACLs
        assert sort_mount_options(["lowerdir=/l"])[0].acl is True
        assert sort_mount_options(["lowerdir=/l", "fsync=0"])[1] == ["lowerdir=/l", "volatile"]

    def test_last_of_two_opposite_flags_wins(self) -> None:
        fuse = sort_mount_options(["lowerdir=/l", "suid", "nosuid", "nodev", "dev"])[0].fuse_options
        assert {"nosuid", "dev"} <= fuse
        assert not {"suid", "nodev"} & fuse


def _overlay_options(dirs: Stackdirs) -> str:
    lowers = ":".join(str(p) for p in dirs.lowers)
    return f"lowerdir={lowers},upperdir={dirs.upper},workdir={dirs.work}"


def _layerfs(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(LAYERFS), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.mark.fuse
@pytest.mark.root
@pytest.mark.timeout(120)
class TestMounts:
    def test_containers_storage_convention(self, mounter: Mounter) -> None:
        dirs = mounter.layers({"etc/motd": "hi", "data/old": "old"}, {"data/base": "b"})
        assert dirs.mnt is not None and dirs.upper is not None
        mounter.mounted.append(dirs.mnt)
        options = f"{_overlay_options(dirs)},,volatile,{SELINUX_LABEL},noacl,xino=off"
        _layerfs("-o", options, dirs.mnt)
        entry = mounted(dirs.mnt)
        assert entry is not None and entry.fstype == "fuse.layerfs"
        assert entry.source == "layerfs"
        # fuse-overlayfs's defaults for root: others may enter, setuid bits count, no atime
        assert "allow_other" in entry.super_options
        assert "noatime" in entry.options and "nosuid" not in entry.options
        (dirs.mnt / "data" / "new").write_text("new")
        (dirs.mnt / "data" / "old").unlink()
        # podman unmounts with fusermount3 -u: the daemon goes as well
        owner = read_pid(daemon.pidfile_path(dirs.mnt))
        subprocess.run(["fusermount3", "-u", str(dirs.mnt)], check=True)
        assert wait_gone(*owner)
        assert mountinfo.find(dirs.mnt) is None
        assert (dirs.upper / "data" / "new").read_text() == "new"
        assert (dirs.upper / "data" / "old").stat().st_rdev == 0

    def test_mount_fuse3_convention_with_mount8_options(self, mounter: Mounter) -> None:
        dirs = mounter.layers({"f": "x"})
        assert dirs.mnt is not None
        mounter.mounted.append(dirs.mnt)
        generic = "rw,nodev,noexec,_netdev,x-systemd.automount,nofail,defaults,relatime"
        _layerfs("myimage", dirs.mnt, "-o", f"{generic},{_overlay_options(dirs)}")
        entry = mounted(dirs.mnt)
        assert entry is not None and entry.source == "myimage"
        assert {"nodev", "noexec"} <= entry.options
        assert (dirs.mnt / "f").read_text() == "x"
        mounter.unmount(dirs.mnt)

    def test_read_only_option(self, mounter: Mounter) -> None:
        dirs = mounter.layers({"f": "x"})
        assert dirs.mnt is not None
        mounter.mounted.append(dirs.mnt)
        _layerfs("-o", f"{_overlay_options(dirs)},ro", dirs.mnt)
        with pytest.raises(OSError) as caught:
            (dirs.mnt / "g").write_text("no")
        assert caught.value.errno == errno.EROFS
        mounter.unmount(dirs.mnt)

    def test_unknown_option_is_one_line_and_mounts_nothing(self, mounter: Mounter) -> None:
        dirs = mounter.layers({"f": "x"})
        assert dirs.mnt is not None
        done = _layerfs("-o", f"{_overlay_options(dirs)},plugins=x", dirs.mnt, check=False)
        assert done.returncode == 1
        assert done.stderr == "layerfs: unknown mount option: plugins=x\n"
        assert mountinfo.find(dirs.mnt) is None

    def test_usage_error_is_one_line(self, tmp_path: Path) -> None:
        done = _layerfs("-o", "lowerdir=/x", check=False)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "usage:" in done.stderr

    def test_a_subcommand_name_wins(self, tmp_path: Path) -> None:
        done = _layerfs("images", tmp_path, "-o", "lowerdir=/x", check=False)
        assert done.returncode == 2 and "No such option" in done.stderr

    def test_foreground_until_unmounted(self, mounter: Mounter) -> None:
        dirs = mounter.layers({"f": "x"})
        assert dirs.mnt is not None
        mounter.mounted.append(dirs.mnt)
        proc = subprocess.Popen(
            [str(LAYERFS), "-f", "-o", _overlay_options(dirs), str(dirs.mnt)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while mountinfo.find(dirs.mnt) is None and proc.poll() is None:
                assert time.monotonic() < deadline, "no mount within 30 s"
                time.sleep(0.05)
            assert (dirs.mnt / "f").read_text() == "x"
            subprocess.run(["fusermount3", "-u", str(dirs.mnt)], check=True)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
