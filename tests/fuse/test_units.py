"""The FUSE frontend's own logic, without a kernel: options, helper arguments, tables."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fuse_mount.attrs import Timeouts
from fuse_mount.handles import HandleTable, OpenDir
from fuse_mount.inodes import ROOT_INODE, InodeTable
from fuse_mount.options import parse_mount, sort_mount_options
from layerfs.cli.mount_helper import UsageError, parse_args
from layerfs.errors import ConfigError
from layerfs.options import escape_option_value, split_option_list
from layerfs.whiteout import XattrNamespace


def node(ino: int) -> Any:
    return SimpleNamespace(ino=ino, lower_only=True)


class TestOptions:
    def test_split_keeps_escaped_commas(self) -> None:
        assert split_option_list(r"lowerdir=/a\,b:/c,upperdir=/u,,ro") == [
            r"lowerdir=/a\,b:/c",
            "upperdir=/u",
            "ro",
        ]

    def test_escape_round_trips_through_split(self) -> None:
        item = "upperdir=" + escape_option_value("/x,y:z")
        assert split_option_list(item + ",rw") == [item, "rw"]

    def test_owners(self) -> None:
        opts, stack = sort_mount_options(
            [
                "lowerdir=/a:/b",
                "upperdir=/u",
                "workdir=/w",
                "allow_other",
                "noatime",
                "nofail",
                "x-systemd.automount",
                "relatime",
                "fsname=img",
                "timeout=5",
                "index=off",
            ]
        )
        assert stack == ["lowerdir=/a:/b", "upperdir=/u", "workdir=/w", "index=off"]
        assert {"allow_other", "noatime", "default_permissions", "fsname=img"} <= opts.fuse_options
        assert "subtype=layerfs" in opts.fuse_options
        assert not any(o.startswith(("nofail", "x-", "relatime")) for o in opts.fuse_options)
        assert opts.timeouts == Timeouts(upper=5.0)
        assert not opts.readonly

    def test_default_permissions_is_always_on(self) -> None:
        assert "default_permissions" in sort_mount_options(["lowerdir=/a"])[0].fuse_options

    def test_ro_wins_over_rw(self) -> None:
        opts = sort_mount_options(["lowerdir=/a", "rw", "ro"])[0]
        assert opts.readonly
        assert "rw" not in opts.fuse_options

    def test_fsname_from_source(self) -> None:
        opts = sort_mount_options(["lowerdir=/a"], fsname="myimage")[0]
        assert "fsname=myimage" in opts.fuse_options

    def test_busy_poll(self) -> None:
        assert sort_mount_options(["lowerdir=/a"])[0].busy_poll_us == 200
        assert sort_mount_options(["lowerdir=/a", "busy_poll=0"])[0].busy_poll_us == 0
        opts, stack = sort_mount_options(["lowerdir=/a", "busy_poll=50"])
        assert opts.busy_poll_us == 50
        assert not any(o.startswith("busy_poll") for o in (*opts.fuse_options, *stack))

    @pytest.mark.parametrize(
        "bad", ["timeout=x", "timeout=-1", "threads=0", "fsname=", "busy_poll=-1", "busy_poll=1.5"]
    )
    def test_bad_adapter_option(self, bad: str) -> None:
        with pytest.raises(ConfigError):
            sort_mount_options(["lowerdir=/a", bad])[0]


class TestParseMount:
    """One reading of a mount's options, at the edge: its stack and its FUSE options."""

    def test_stack_and_fuse_options_from_one_list(self) -> None:
        items = [r"lowerdir=/a\:x:/b", "upperdir=/u", "workdir=/w", "allow_other", "fsync=0"]
        spec, opts = parse_mount(items, fsname="img", privileged=True)
        assert spec.lowers == (Path("/a:x"), Path("/b"))
        assert (spec.upper, spec.work) == (Path("/u"), Path("/w"))
        assert spec.options.volatile
        assert {"allow_other", "fsname=img"} <= opts.fuse_options and not opts.readonly

    def test_layers_given_apart_come_first(self) -> None:
        spec, _ = parse_mount(
            ["lowerdir=/c", "metacopy=on"], lowers=[Path("/a,b")], upper=Path("/u"),
            work=Path("/w"), privileged=True,
        )  # fmt: skip
        assert spec.lowers == (Path("/a,b"), Path("/c"))
        assert (spec.upper, spec.work) == (Path("/u"), Path("/w"))
        assert spec.options.metacopy

    def test_without_an_upper_the_mount_is_read_only(self) -> None:
        spec, opts = parse_mount(["rw"], lowers=[Path("/a")], privileged=True)
        assert spec.upper is None
        assert opts.readonly and "ro" in opts.fuse_options and "rw" not in opts.fuse_options

    def test_an_option_nobody_takes_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="unknown mount option: index=off,bogus"):
            parse_mount(["lowerdir=/a", "index=off", "bogus"], privileged=True)

    def test_privilege_picks_the_upper_format(self, tmp_path: Path) -> None:
        items = ["lowerdir=/a", f"upperdir={tmp_path}", f"workdir={tmp_path}"]
        spec, _ = parse_mount(items, privileged=False)
        assert spec.options.upper_format.xattrs is XattrNamespace.USER
        spec, _ = parse_mount(items, privileged=True)
        assert spec.options.upper_format.xattrs is XattrNamespace.TRUSTED


class TestHelperArgs:
    def test_mount8_command_line(self) -> None:
        source, mnt, items, fake = parse_args(
            ["img", "/mnt/x", "-s", "-n", "-o", "rw,lowerdir=/a:/b,nofail"]
        )
        assert (source, mnt, fake) == ("img", Path("/mnt/x"), False)
        assert items == ["rw", "lowerdir=/a:/b", "nofail"]

    def test_fake_and_type(self) -> None:
        _, _, items, fake = parse_args(["s", "/m", "-t", "fuse.layerfs", "-fv", "-olowerdir=/a"])
        assert fake
        assert items == ["lowerdir=/a"]

    @pytest.mark.parametrize("argv", [["only-source"], ["s", "/m", "-q"], ["a", "b", "c"]])
    def test_usage_errors(self, argv: list[str]) -> None:
        with pytest.raises(UsageError):
            parse_args(argv)


class TestInodeTable:
    def test_lookup_counts_and_forget(self) -> None:
        table = InodeTable(node(ROOT_INODE))
        child = node(7)
        table.remember(child)
        table.remember(child)
        assert table.forget(7, 1) is None
        assert table.node(7) is child
        assert table.forget(7, 1) is child
        with pytest.raises(OSError) as info:
            table.node(7)
        assert info.value.errno == errno.ESTALE

    def test_pin_outlives_forget(self) -> None:
        table = InodeTable(node(ROOT_INODE))
        child = node(9)
        table.remember(child)
        table.pin(9)
        assert table.forget(9, 1) is None
        assert table.node(9) is child
        assert table.unpin(9) is child

    def test_root_is_never_dropped(self) -> None:
        root = node(ROOT_INODE)
        table = InodeTable(root)
        assert table.forget(ROOT_INODE, 5) is None
        assert table.node(ROOT_INODE) is root
        assert table.statistics().known == 1


class TestHandleTable:
    def test_numbers_are_not_reused(self) -> None:
        table: HandleTable[OpenDir] = HandleTable()
        first = table.add(OpenDir(5))
        table.pop(first)
        second = table.add(OpenDir(5))
        assert second != first
        assert [d.ino for d in table.of_inode(5)] == [5]
        with pytest.raises(OSError) as info:
            table.get(first)
        assert info.value.errno == errno.EBADF
        assert table.statistics().open == 1


class TestRetire:
    def test_a_retired_node_gets_a_new_id_and_the_old_one_keeps_working(self) -> None:
        table = InodeTable(node(ROOT_INODE))
        child = node(7)
        assert table.remember(child) == 7
        table.retire(7)
        fresh = table.remember(child)
        assert fresh != 7 and table.nodeid(child) == fresh
        assert table.node(7) is child and table.node(fresh) is child
        assert table.forget(7, 1) is None  # the new id still names it
        assert table.forget(fresh, 1) is child
        assert table.nodeid(child) == 7


class TestInodeTableCounts:
    def test_a_pinned_inode_the_kernel_forgot_is_counted_again_from_zero(self) -> None:
        table = InodeTable(node(ROOT_INODE))
        child = node(7)
        table.remember(child)
        table.pin(7)
        assert table.forget(7, 1) is None
        table.remember(child)  # looked up again while still open
        assert table.statistics().lookups == 2  # the root's one and this one
        assert table.unpin(7) is None
        assert table.forget(7, 1) is child

    def test_statistics(self) -> None:
        table = InodeTable(node(ROOT_INODE))
        for ino in (5, 6, 6):
            table.remember(node(ino) if ino == 5 else table_node(table, ino))
        table.pin(5)
        stats = table.statistics()
        assert (stats.known, stats.pinned, stats.lookups) == (3, 1, 4)


def table_node(table: InodeTable, ino: int) -> Any:
    """The node the table has for *ino*, or a new one."""
    try:
        return table.node(ino)
    except OSError:
        return node(ino)
