"""Real privilege versus uid 0 in a user namespace, outer uids, and the whiteout probe."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from layerfs import WhiteoutStyle, XattrNamespace, privilege
from layerfs.errors import ConfigError
from layerfs.options import parse_mount_options

IDENTITY = [(0, 0, 4294967295)]
PODMAN_ROOTLESS = [(0, 1000, 1), (1, 100000, 65536)]


def test_id_map_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "uid_map"
    path.write_text("         0       1000          1\n         1     100000      65536\n")
    assert privilege.read_id_map(path) == PODMAN_ROOTLESS


def test_uid_0_of_a_user_namespace_is_not_the_initial_namespace() -> None:
    assert privilege.in_initial_user_namespace(IDENTITY)
    assert not privilege.in_initial_user_namespace(PODMAN_ROOTLESS)
    assert not privilege.in_initial_user_namespace([(0, 0, 1)])


def test_outer_uid_is_the_same_person_inside_and_outside() -> None:
    assert privilege.outer_uid(0, PODMAN_ROOTLESS) == 1000
    assert privilege.outer_uid(1, PODMAN_ROOTLESS) == 100000
    assert privilege.outer_uid(1000, IDENTITY) == 1000
    assert privilege.outer_uid(70000, PODMAN_ROOTLESS) == 70000  # unmapped: unchanged


def test_capabilities_come_from_capeff() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000200000\n"
    assert privilege.effective_capabilities(status) == 1 << privilege.CAP_SYS_ADMIN
    assert privilege.effective_capabilities("Name:\tx\n") == 0


def test_this_process_is_judged_by_its_own_proc_files() -> None:
    initial = privilege.read_id_map() == IDENTITY
    has_admin = bool(privilege.effective_capabilities() >> privilege.CAP_SYS_ADMIN & 1)
    assert privilege.is_privileged() == (initial and has_admin)
    assert privilege.is_host_root() == (initial and os.geteuid() == 0)


def test_probe_finds_chardev_whiteouts_and_cleans_up(tmp_path: Path) -> None:
    # kernels since 5.8 let every process make 0/0 devices; layerfs needs 5.8 for this probe
    assert privilege.whiteout_style_for(tmp_path) is WhiteoutStyle.CHARDEV
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL])
def test_probe_falls_back_to_wh_files_where_devices_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "mknod", refuse)
    assert privilege.whiteout_style_for(tmp_path) is WhiteoutStyle.WH_FILE
    assert list(tmp_path.iterdir()) == []


def test_probe_of_a_missing_directory_leaves_the_error_to_the_stack(tmp_path: Path) -> None:
    assert privilege.whiteout_style_for(tmp_path / "missing") is WhiteoutStyle.CHARDEV


def test_unprivileged_options_pick_user_xattrs(tmp_path: Path) -> None:
    spec, _ = parse_mount_options(
        f"lowerdir=/l,upperdir={tmp_path},workdir={tmp_path}", privileged=False
    )
    assert spec.options.upper_format.xattrs is XattrNamespace.USER
    assert spec.options.upper_format.whiteouts is WhiteoutStyle.CHARDEV  # probed in workdir
    assert spec.options.metacopy is False


def test_options_override_the_automatic_choice(tmp_path: Path) -> None:
    text = f"lowerdir=/l,upperdir={tmp_path},workdir={tmp_path},whiteout=wh-file,metacopy=on"
    spec, _ = parse_mount_options(text, privileged=False)
    assert spec.options.upper_format.whiteouts is WhiteoutStyle.WH_FILE
    assert spec.options.metacopy is True
    spec, _ = parse_mount_options("lowerdir=/l,userxattr")
    assert spec.options.upper_format.xattrs is XattrNamespace.USER
    assert spec.options.upper_format.whiteouts is WhiteoutStyle.CHARDEV
    spec, _ = parse_mount_options("lowerdir=/l")
    assert spec.options.upper_format.xattrs is XattrNamespace.TRUSTED


def test_bad_whiteout_option() -> None:
    with pytest.raises(ConfigError, match=re.escape("whiteout= takes chardev|wh-file")):
        parse_mount_options("lowerdir=/l,whiteout=char")
