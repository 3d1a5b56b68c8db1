"""OCI runtime bundles: config.json from an image config, and a real ``runc run`` on one."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from layerfs.errors import StoreError
from layerfs.store.bundle import runtime_config
from layerfs.store.store import Store

from .builders import E, Image, write_oci_layout
from .helpers import run_layerfs


def test_process_from_image_config() -> None:
    image = {
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/srv",
            "User": "1000:100",
        }
    }
    config = runtime_config(image, command=None, hostname="box")
    process = config["process"]
    assert process["args"] == ["/bin/app", "--serve"]
    assert process["env"] == ["PATH=/bin", "A=1"]
    assert (process["cwd"], process["user"]) == ("/srv", {"uid": 1000, "gid": 100})
    assert config["root"] == {"path": "rootfs", "readonly": False}
    assert config["hostname"] == "box"
    assert {n["type"] for n in config["linux"]["namespaces"]} >= {"pid", "mount"}
    explicit = runtime_config(image, command=["/bin/sh"], hostname="box")
    assert explicit["process"]["args"] == ["/bin/sh"]


def test_process_defaults_and_refusals() -> None:
    config = runtime_config({}, command=["/bin/true"], hostname="h")
    assert config["process"]["cwd"] == "/" and config["process"]["user"] == {"uid": 0, "gid": 0}
    assert config["process"]["env"][0].startswith("PATH=")
    assert runtime_config({"config": {"User": "7"}}, command=["x"], hostname="h")["process"][
        "user"
    ] == {"uid": 7, "gid": 7}
    with pytest.raises(StoreError):
        runtime_config({}, command=None, hostname="h")
    with pytest.raises(StoreError):
        runtime_config({"config": {"User": "nobody"}}, command=["x"], hostname="h")


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.interop
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not (shutil.which("runc") and shutil.which("busybox")), reason="needs runc")
def test_runc_runs_a_bundle(tmp_path: Path) -> None:
    busybox = Path(shutil.which("busybox") or "").read_bytes()
    layer = [
        E("bin", "dir"),
        E("bin/busybox", data=busybox, mode=0o755),
        E("bin/sh", "symlink", target="busybox"),
        E("etc", "dir"),
        E("etc/motd", data=b"from the image\n"),
        E("etc/gone", data=b"deleted by the container\n"),
    ]
    write_oci_layout(tmp_path / "src", [Image("bb:1", [layer])])
    root = tmp_path / "store"
    store = Store.open(root)
    store.import_path(tmp_path / "src")
    store.create_container("bb:1", name="box")
    bundle = tmp_path / "bundle"
    result = run_layerfs(
        "bundle", "--root", root, "box", bundle, "--",
        "/bin/sh", "-c",
        "cat /etc/motd; echo written > /out; echo changed >> /etc/motd; rm /etc/gone",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        assert (bundle / "config.json").is_file()
        assert (bundle / "rootfs" / "etc" / "motd").read_bytes() == b"from the image\n"
        run = subprocess.run(
            ["runc", "run", "--bundle", str(bundle), f"layerfs-test-{secrets.token_hex(4)}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == "from the image\n"
    finally:
        done = run_layerfs("umount", bundle / "rootfs")
        if done.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(bundle / "rootfs")], check=False)
    # the changes sit in the container's writable layer, and diff and commit see them
    upper = store.container("box").upper
    assert (upper / "out").read_text() == "written\n"
    assert (upper / "etc" / "motd").read_text() == "from the image\nchanged\n"
    assert os.stat(upper / "etc" / "gone", follow_symlinks=False).st_rdev == 0
    changes = [f"{c.kind.name} {c.path}" for c in Store.open(root).diff("box")]
    assert {"ADDED /out", "CHANGED /etc/motd", "DELETED /etc/gone"} <= set(changes)
    committed = Store.open(root).commit("box", "bb:2")
    flat = tmp_path / "flat"
    Store.open(root).unpack("bb:2", flat)
    assert (flat / "out").read_text() == "written\n"
    assert (flat / "etc" / "motd").read_text() == "from the image\nchanged\n"
    assert not (flat / "etc" / "gone").exists()
    assert len(committed.layers) == 2
