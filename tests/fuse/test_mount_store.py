"""``layerfs mount IMAGE|CONTAINER MNT``: images mount read-only, containers read-write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from layerfs.store import Store
from tests.fuse.conftest import Mounter, run_cli
from tests.store.builders import E, Image, write_oci_layout

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    write_oci_layout(
        layout,
        [
            Image(
                "demo:1",
                [
                    [
                        E("etc", "dir", mode=0o755),
                        E("etc/motd", data=b"base\n"),
                        E("app", "dir", mode=0o755),
                        E("app/old", data=b"old\n"),
                    ],
                    [E("etc/motd", data=b"top\n")],
                ],
            )
        ],
    )
    root = tmp_path / "store"
    Store.open(root).import_path(layout)
    return root


def test_image_mounts_read_only(store_root: Path, mounter: Mounter, tmp_path: Path) -> None:
    mnt = tmp_path / "image-mnt"
    mnt.mkdir()
    mounter.mounted.append(mnt)
    run_cli("mount", "--root", str(store_root), "demo:1", str(mnt))
    assert (mnt / "etc" / "motd").read_text() == "top\n"
    with pytest.raises(OSError) as info:
        (mnt / "new").write_text("x")
    assert info.value.errno == errno.EROFS
    mounter.unmount(mnt)


def test_container_changes_land_in_its_upper(
    store_root: Path, mounter: Mounter, tmp_path: Path
) -> None:
    run_cli("create", "--root", str(store_root), "--name", "box", "demo:1")
    mnt = tmp_path / "box-mnt"
    mnt.mkdir()
    mounter.mounted.append(mnt)
    run_cli("mount", "--root", str(store_root), "box", str(mnt))
    (mnt / "app" / "old").unlink()
    (mnt / "etc" / "motd").write_text("changed\n")
    (mnt / "app" / "new").write_text("new\n")
    mounter.unmount(mnt)
    diff = run_cli("diff", "--root", str(store_root), "box").stdout.split("\n")
    assert "D /app/old" in diff
    assert "C /etc/motd" in diff
    assert "A /app/new" in diff
    run_cli("commit", "--root", str(store_root), "box", "demo:2")
    mnt2 = tmp_path / "committed"
    mnt2.mkdir()
    mounter.mounted.append(mnt2)
    run_cli("mount", "--root", str(store_root), "demo:2", str(mnt2))
    assert sorted(os.listdir(mnt2 / "app")) == ["new"]
    assert (mnt2 / "etc" / "motd").read_text() == "changed\n"
    mounter.unmount(mnt2)


def test_source_and_lower_conflict(store_root: Path, tmp_path: Path) -> None:
    done = run_cli(
        "mount",
        "--root",
        str(store_root),
        "--lower",
        str(tmp_path),
        "demo:1",
        str(tmp_path),
        check=False,
    )
    assert done.returncode != 0
    assert "either IMAGE|CONTAINER or --lower" in done.stderr
    assert "Traceback" not in done.stderr
