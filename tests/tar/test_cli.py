"""``layerfs layer apply|create`` through click's runner."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from layerfs.cli.layer import layer
from tests.userns import run_as_namespace_root, run_in_namespace

pytestmark = pytest.mark.timeout(60)


def _upper(tmp_path: Path) -> Path:
    up = tmp_path / "upper"
    (up / "d").mkdir(parents=True)
    (up / "d" / "f").write_bytes(b"content")
    (up / ".wh.gone").write_bytes(b"")
    return up


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_create_then_apply(tmp_path: Path, compression: str) -> None:
    runner = CliRunner()
    blob = tmp_path / "blob"
    res = runner.invoke(
        layer, ["create", str(_upper(tmp_path)), str(blob), "--compression", compression]
    )
    assert res.exit_code == 0, res.output
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert f"digest     {digest}" in res.output
    assert "diff_id    sha256:" in res.output
    assert not (tmp_path / "blob.partial").exists()

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "gone").write_bytes(b"old")
    res = runner.invoke(layer, ["apply", str(blob), str(rootfs)])
    assert res.exit_code == 0, res.output
    assert f"digest  {digest}" in res.output
    assert sorted(os.listdir(rootfs)) == ["d"]

    res = runner.invoke(layer, ["apply", "--as-layer", str(blob), str(tmp_path / "lower")])
    assert res.exit_code == 0, res.output
    if os.geteuid() == 0:
        st = (tmp_path / "lower" / "gone").lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    else:
        assert (tmp_path / "lower" / ".wh.gone").exists()


def test_as_layer_of_uid_0_in_a_user_namespace_writes_unprivileged_forms(tmp_path: Path) -> None:
    """uid 0 of a user namespace can make neither 0/0 devices nor trusted.* xattrs."""
    upper = _upper(tmp_path)
    os.setxattr(upper / "d", "user.overlay.opaque", b"y")
    blob = tmp_path / "blob"
    assert CliRunner().invoke(layer, ["create", str(upper), str(blob)]).exit_code == 0
    lower = tmp_path / "lower"
    code = "from layerfs.cli.main import main; main()"
    out = run_as_namespace_root(
        [sys.executable, "-c", code, "layer", "apply", "--as-layer", str(blob), str(lower)]
    )
    assert out.startswith("entries ")
    assert (lower / ".wh.gone").is_file()
    assert os.getxattr(lower / "d", "user.overlay.opaque") == b"y"


def _apply_as_namespace_root(blob: Path, lower: Path) -> subprocess.CompletedProcess[str]:
    """``layerfs layer apply --as-layer BLOB LOWER`` as uid 0 of ``unshare -r``, which maps
    only itself (the directory is opened up for it)."""
    os.chmod(lower.parent, 0o777)
    code = "from layerfs.cli.main import main; main()"
    argv = [sys.executable, "-c", code, "layer", "apply", "--as-layer", str(blob), str(lower)]
    return run_in_namespace(argv)


def test_an_owner_the_user_namespace_does_not_map_is_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A layer with files of uid 1000 cannot be unpacked with their owners where only uid 0
    is mapped (podman says the same); the error names the ids and the path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("home/user/notes")
        info.uid = info.gid = 1000
        info.size = 4
        tf.addfile(info, io.BytesIO(b"text"))
    blob = tmp_path / "layer.tar"
    blob.write_bytes(buf.getvalue())
    done = _apply_as_namespace_root(blob, tmp_path / "lower")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "layerfs: cannot give home/user/notes the owner 1000:1000: this user namespace does not"
        " map these ids (see /etc/subuid and /etc/subgid)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tar"]


@pytest.mark.root  # mknod of the device the layer carries
def test_uid_0_of_a_user_namespace_leaves_device_nodes_out(tmp_path: Path) -> None:
    """Images made by debootstrap-style builders carry ``/dev`` nodes; without root they are
    left out with one warning and the layer is applied, as rootless podman does. The layer
    is GNU tar's."""
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    (src / "etc").mkdir()
    os.mknod(src / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (src / "etc" / "hostname").write_text("box")
    blob = tmp_path / "layer.tar"
    tar = ["tar", "--numeric-owner", "-cf", str(blob), "-C", str(src), "."]
    subprocess.run(tar, check=True, timeout=60)
    lower = tmp_path / "lower"
    done = _apply_as_namespace_root(blob, lower)
    assert done.returncode == 0, done.stderr
    assert "left out 1 device node(s) (dev/null)" in done.stderr
    assert (lower / "etc" / "hostname").read_text() == "box"
    assert os.listdir(lower / "dev") == []


def test_help_texts() -> None:
    runner = CliRunner()
    for args in (["--help"], ["apply", "--help"], ["create", "--help"]):
        res = runner.invoke(layer, args)
        assert res.exit_code == 0
        assert "layer" in res.output.lower()
    assert "--as-layer" in runner.invoke(layer, ["apply", "--help"]).output
    assert "--lower" in runner.invoke(layer, ["create", "--help"]).output


def test_apply_refuses_unsafe_layer(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../escape")
        tf.addfile(info, io.BytesIO(b""))
    blob = tmp_path / "evil.tar"
    blob.write_bytes(buf.getvalue())
    (tmp_path / "root").mkdir()
    res = CliRunner().invoke(layer, ["apply", str(blob), str(tmp_path / "root")])
    assert res.exit_code != 0
    assert "../escape" in str(res.exception)
    assert not (tmp_path / "escape").exists()


def test_create_with_lower_for_metacopy(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "big").write_bytes(b"data below")
    up = tmp_path / "upper"
    up.mkdir()
    (up / "big").write_bytes(b"")
    os.setxattr(up / "big", "trusted.overlay.metacopy", b"")
    blob = tmp_path / "blob"
    runner = CliRunner()
    res = runner.invoke(
        layer, ["create", str(up), str(blob), "--lower", str(lower), "--compression", "none"]
    )
    assert res.exit_code == 0, res.output
    assert b"data below" in blob.read_bytes()
    res = runner.invoke(layer, ["create", str(up), str(tmp_path / "b2")])
    assert res.exit_code != 0
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b2.partial").exists()
