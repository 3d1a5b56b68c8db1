"""uidmapping/gidmapping and squash_to_*: owners shown through the mount versus stored ones."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from fuse_mount.idmap import IdMap, IdRange, build_idmap, parse_ranges
from fuse_mount.options import sort_mount_options
from layerfs.errors import ConfigError
from layerfs.types import Stat
from tests.fuse.conftest import BACKENDS, Mounter

PODMAN_4 = ":0:1:1001:1001:0:1:1002:1002:64535"  # podman 4 --userns=keep-id, leading ':' included


def stat_of(uid: int, gid: int) -> Stat:
    return Stat(*([0] * len(Stat._fields)))._replace(uid=uid, gid=gid, mode=0o100644)


class TestParsing:
    def test_podman_4_writes_a_leading_colon(self) -> None:
        assert parse_ranges("uidmapping", PODMAN_4) == (
            IdRange(0, 1, 1001),
            IdRange(1001, 0, 1),
            IdRange(1002, 1002, 64535),
        )

    @pytest.mark.parametrize("bad", ["", "0:1", "0:1:x", "0:1:0", "0:-1:5", "1:2:3:4"])
    def test_bad_ranges_are_one_line_errors(self, bad: str) -> None:
        with pytest.raises(ConfigError, match="uidmapping="):
            parse_ranges("uidmapping", bad)

    def test_mount_options_build_the_map(self) -> None:
        opts, stack = sort_mount_options(
            ["lowerdir=/a", "uidmapping=0:100000:65536", "gidmapping=0:200000:10"]
        )
        assert opts.idmap is not None
        assert opts.idmap.uids == (IdRange(0, 100000, 65536),)
        assert opts.idmap.gids == (IdRange(0, 200000, 10),)
        assert stack == ["lowerdir=/a"]
        assert sort_mount_options(["lowerdir=/a"])[0].idmap is None

    def test_squash_options(self) -> None:
        opts, stack = sort_mount_options(["lowerdir=/a", "squash_to_root", "squash_to_gid=5"])
        assert opts.idmap is not None
        assert (opts.idmap.squash_uid, opts.idmap.squash_gid) == (0, 5)
        assert stack == ["lowerdir=/a"]
        with pytest.raises(ConfigError, match="squash_to_uid="):
            sort_mount_options(["lowerdir=/a", "squash_to_uid=root"])[0]

    def test_no_options_no_map(self) -> None:
        assert build_idmap({}, squash_to_root=False) is None


class TestMapping:
    idmap = IdMap(parse_ranges("u", PODMAN_4), parse_ranges("g", PODMAN_4))

    def test_stored_ids_are_shown_as_host_ids(self) -> None:
        shown = self.idmap.show(stat_of(0, 1001))
        assert (shown.uid, shown.gid) == (1, 0)
        shown = self.idmap.show(stat_of(5000, 1000))
        assert (shown.uid, shown.gid) == (5000, 1001)

    def test_ids_outside_every_range_show_as_overflow(self) -> None:
        shown = self.idmap.show(stat_of(70000, 70000))
        assert (shown.uid, shown.gid) == (65534, 65534)

    def test_request_ids_are_stored_as_container_ids(self) -> None:
        assert self.idmap.stored_uid(1) == 0
        assert self.idmap.stored_uid(0) == 1001
        assert self.idmap.stored_gid(5000) == 5000
        assert self.idmap.stored_uid(99999) == 65534
        assert self.idmap.stored_changes({"uid": 0, "mode": 0o600}) == {"uid": 1001, "mode": 0o600}

    def test_identity_without_ranges(self) -> None:
        st = stat_of(7, 8)
        assert IdMap().show(st) is st
        assert IdMap().stored_uid(7) == 7

    def test_squash_shows_one_owner(self) -> None:
        shown = IdMap(squash_uid=0, squash_gid=0).show(stat_of(1000, 1000))
        assert (shown.uid, shown.gid) == (0, 0)


class TestSquashedChown:
    @staticmethod
    def refusing(changes: dict[str, int]) -> dict[str, int]:
        if "uid" in changes or "gid" in changes:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return changes

    def test_refused_chown_is_ignored_when_squashing(self) -> None:
        squash = IdMap(squash_uid=0)
        assert squash.apply_changes(self.refusing, {"uid": 5, "mode": 0o600}) == {"mode": 0o600}

    def test_refused_chown_fails_otherwise(self) -> None:
        with pytest.raises(PermissionError):
            IdMap().apply_changes(self.refusing, {"uid": 5})
        with pytest.raises(PermissionError):
            IdMap(squash_uid=0).apply_changes(self.refusing_mode, {"mode": 0o600})

    @staticmethod
    def refusing_mode(changes: dict[str, int]) -> dict[str, int]:
        raise PermissionError(errno.EPERM, "Operation not permitted")


@pytest.mark.fuse
@pytest.mark.root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)  # the mapping lives in the shared request layer
def test_mapped_mount_shows_host_ids_and_stores_container_ids(
    mounter: Mounter, backend: str
) -> None:
    dirs = mounter.layers({"root-file": "r", "user-file": "u", "far": "f", "dir": None})
    lower = dirs.lowers[0]
    os.chown(lower / "user-file", 1000, 1000)
    os.chown(lower / "far", 70000, 70000)
    os.chmod(lower / "dir", 0o755)
    mapping = "uidmapping=0:100000:65536,gidmapping=0:100000:65536"
    mnt = mounter.mount(dirs, "-o", f"{mapping},allow_other,backend={backend}")
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in mnt.iterdir()}
    assert owners["root-file"] == (100000, 100000)
    assert owners["user-file"] == (101000, 101000)
    assert owners["far"] == (65534, 65534)
    # container root (host 100000) creates; the upper stores container ids. (The chdir runs
    # before setpriv drops to 100000, which could not walk the test's 0700 temp dirs.)
    as_container_root = ["setpriv", "--reuid=100000", "--regid=100000", "--clear-groups"]
    subprocess.run([*as_container_root, "touch", "new"], cwd=mnt / "dir", check=True)
    os.chown(mnt / "root-file", 101000, 100005)
    (mnt / "by-host-root").write_text("outside every range")
    assert (mnt / "dir" / "new").stat().st_uid == 100000
    mounter.unmount(mnt)
    upper = dirs.upper
    assert upper is not None
    stored = {p: (upper / p).stat() for p in ("dir/new", "root-file", "by-host-root")}
    assert (stored["dir/new"].st_uid, stored["dir/new"].st_gid) == (0, 0)
    assert (stored["root-file"].st_uid, stored["root-file"].st_gid) == (1000, 5)
    assert stored["by-host-root"].st_uid == 65534


@pytest.mark.fuse
@pytest.mark.root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_squash_to_root_shows_every_object_as_root(mounter: Mounter, backend: str) -> None:
    dirs = mounter.layers({"f": "x"})
    os.chown(dirs.lowers[0] / "f", 1000, 1000)
    mnt = mounter.mount(dirs, "-o", f"squash_to_root,backend={backend}")
    st = (mnt / "f").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    os.chown(mnt / "f", 1234, 1234)
    assert (mnt / "f").stat().st_uid == 0
    mounter.unmount(mnt)
    assert dirs.upper is not None and (dirs.upper / "f").stat().st_uid == 1234
