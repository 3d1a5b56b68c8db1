"""Layer and store paths holding ``:`` or ``,`` mount through every door (once they did not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerfs.options import escape_option_value
from layerfs.store import Store
from tests.fuse.conftest import Mounter, run_cli, write_tree
from tests.store.builders import E, Image, write_oci_layout

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.timeout(120)]


def test_lower_with_a_colon_through_escaped_lower(mounter: Mounter, tmp_path: Path) -> None:
    odd = write_tree(tmp_path / "a:b,c", {"f": "in a colon dir\n"})
    base = write_tree(tmp_path / "base", {"g": "base\n"})
    mnt = write_tree(tmp_path / "mnt", {})
    mounter.mounted.append(mnt)
    run_cli("mount", "--lower", escape_option_value(str(odd)) + ":" + str(base), str(mnt))
    assert (mnt / "f").read_text() == "in a colon dir\n"
    assert (mnt / "g").read_text() == "base\n"
    mounter.unmount(mnt)


def test_store_root_with_a_colon_mounts_images(mounter: Mounter, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    image = Image("demo:1", [[E("etc", "dir", mode=0o755), E("etc/motd", data=b"hi\n")]])
    write_oci_layout(layout, [image])
    root = tmp_path / "store:with,odd"
    Store.open(root).import_path(layout)
    mnt = write_tree(tmp_path / "mnt", {})
    mounter.mounted.append(mnt)
    run_cli("mount", "--root", str(root), "demo:1", str(mnt))
    assert (mnt / "etc" / "motd").read_text() == "hi\n"
    mounter.unmount(mnt)
    run_cli("create", "--root", str(root), "--name", "box", "demo:1")
    run_cli("mount", "--root", str(root), "box", str(mnt))
    mounter.mounted.append(mnt)
    (mnt / "etc" / "motd").write_text("changed\n")
    mounter.unmount(mnt)
    assert "C /etc/motd" in run_cli("diff", "--root", str(root), "box").stdout
