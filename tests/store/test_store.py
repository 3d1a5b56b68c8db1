"""The Store facade: import, resolve, layers, unpack, tags, rmi + gc, containers, commit."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from layerfs import Stack, privilege
from layerfs.errors import BadReferenceError, DigestMismatchError, NotFoundError, StoreError
from layerfs.store.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST
from layerfs.store.store import Store, default_root
from layerfs.tar import ChangeKind, Compression
from layerfs.whiteout import UpperFormat
from tests.progress import RecordingProgress
from tests.userns import python_as_namespace_root

from .builders import BASE, TOP, E, Image, sha, write_oci_layout
from .helpers import tree_files


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store")


@pytest.fixture
def imported(store: Store, tmp_path: Path) -> dict[str, str]:
    digests = write_oci_layout(
        tmp_path / "src",
        [Image("app:1", [BASE, TOP]), Image("base:1", [BASE], compression="zstd")],
    )
    store.import_path(tmp_path / "src")
    return digests


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAYERFS_ROOT", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("LAYERFS_ROOT")
    if privilege.is_host_root():
        assert default_root() == Path("/var/lib/layerfs")
    else:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        assert default_root() == Path.home() / ".local/share/layerfs"


def test_import_and_resolve(store: Store, imported: dict[str, str]) -> None:
    images = store.images()
    assert [im.names for im in images] == [("app:1",), ("base:1",)]
    app = store.resolve("app:1")
    assert app.digest == imported["app:1"]
    assert store.resolve(f"app@{app.digest}").digest == app.digest
    assert store.resolve(app.id[:8]).digest == app.digest
    assert store.resolve(f"sha256:{app.id[:10]}").digest == app.digest
    assert len(app.layers) == 2 and len(app.diff_ids) == 2
    with pytest.raises(NotFoundError):
        store.resolve("app:2")
    with pytest.raises(NotFoundError):
        store.resolve("app")  # app:latest
    with pytest.raises(BadReferenceError):
        store.resolve("Not A Ref")


def test_inspect(store: Store, imported: dict[str, str]) -> None:
    info = store.inspect("app:1")
    assert info["Id"] == imported["app:1"]
    assert info["RepoTags"] == ["app:1"]
    assert info["Manifest"]["mediaType"] == OCI_MANIFEST
    assert info["Config"]["config"]["Env"] == ["PATH=/bin"]


def test_layer_dirs_are_shared_and_in_lower_format(store: Store, imported: dict[str, str]) -> None:
    app, base = store.resolve("app:1"), store.resolve("base:1")
    top, bottom = store.layer_dirs(app)
    assert store.layer_dirs(base) == [bottom], "same diff_id, one directory"
    assert top.name == app.diff_ids[1][7:] and top.parent == store.layout.layers_dir
    whiteout = os.lstat(top / "etc" / "gone")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(top / "usr" / "lib", "trusted.overlay.opaque") == b"y"
    assert (bottom / "bin" / "sh").read_bytes() == b"#!shell"
    assert os.stat(bottom / "bin" / "ash").st_ino == os.stat(bottom / "bin" / "sh").st_ino
    assert os.readlink(bottom / "link") == "etc/passwd"
    assert list(store.layout.tmp_dir.iterdir()) == []


def test_long_operations_report_through_the_progress_protocol(store: Store, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "src", [Image("app:1", [BASE, TOP])])
    recorder = RecordingProgress()
    store.import_path(tmp_path / "src", progress=recorder)
    image = store.resolve("app:1")
    layer_bytes = sum(d.size for d in image.layers)
    assert recorder.tasks["importing src"].done == layer_bytes
    store.layer_dirs(image, recorder)
    for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
        unpacking = recorder.tasks[f"unpacking {diff_id[7:19]}"]
        assert unpacking.total == desc.size and unpacking.done == desc.size
    store.unpack("app:1", tmp_path / "rootfs", recorder)
    assert sum(recorder.tasks[f"applying {d[7:19]}"].done for d in image.diff_ids) == layer_bytes
    assert recorder.all_ended()


def test_unpack_flattens(store: Store, imported: dict[str, str], tmp_path: Path) -> None:
    store.unpack("app:1", tmp_path / "rootfs")
    root = tmp_path / "rootfs"
    assert not (root / "etc" / "gone").exists()
    assert sorted(os.listdir(root / "usr" / "lib")) == ["new"]
    assert (root / "etc" / "motd").read_bytes() == b"hello\n"
    assert os.stat(root / "bin" / "sh").st_mode & 0o777 == 0o755


def test_tag_and_remove(store: Store, imported: dict[str, str]) -> None:
    store.layer_dirs(store.resolve("app:1"))
    store.tag("app:1", "app:latest")
    assert store.resolve("app").digest == imported["app:1"]
    result = store.remove_image("app:1")
    assert result.untagged == ("app:1",) and result.removed == ()
    assert result.gc.blobs == ()
    result = store.remove_image("app")
    assert result.removed == (imported["app:1"],)
    assert imported["app:1"] in result.gc.blobs
    assert len(result.gc.layers) == 1, "the base layer is still used by base:1"
    assert [im.names for im in store.images()] == [("base:1",)]
    with pytest.raises(NotFoundError):
        store.remove_image("app:1")


def test_remove_by_id_drops_every_tag(store: Store, imported: dict[str, str]) -> None:
    store.tag("base:1", "base:2")
    result = store.remove_image(imported["base:1"][7:19])
    assert sorted(result.untagged) == ["base:1", "base:2"]
    assert [im.names for im in store.images()] == [("app:1",)]


def test_gc_never_deletes_what_a_container_uses(store: Store, imported: dict[str, str]) -> None:
    box = store.create_container("app:1", name="box")
    dirs = store.layer_dirs(store.resolve("app:1"))
    store.remove_image("app:1")
    store.remove_image("base:1")
    assert all(d.is_dir() for d in dirs)
    assert store.blobs.exists(box.image)
    assert store.mount_spec("box") == (dirs, box.upper, box.work)
    store.remove_container("box")
    assert not any(d.exists() for d in dirs)
    assert list(store.blobs.list()) == []


def test_containers(store: Store, imported: dict[str, str]) -> None:
    a = store.create_container("app:1")
    b = store.create_container("base:1", name="b")
    assert [c.id for c in store.containers()] == [a.id, b.id]
    assert store.container(a.id[:6]) == a and store.container("b") == b
    assert a.upper.is_dir() and a.work.is_dir()
    with pytest.raises(StoreError):
        store.create_container("app:1", name="b")
    with pytest.raises(BadReferenceError):
        store.create_container("app:1", name="bad/name")
    with pytest.raises(NotFoundError):
        store.container("nope")
    store.remove_container(a.name)
    assert [c.id for c in store.containers()] == [b.id]
    assert not a.path.exists()


def test_mount_spec_of_an_image_is_read_only(store: Store, imported: dict[str, str]) -> None:
    lowers, upper, work = store.mount_spec("app:1")
    assert (upper, work) == (None, None)
    assert lowers == store.layer_dirs(store.resolve("app:1"))
    with pytest.raises(NotFoundError):
        store.mount_spec("nothing")


def _change_upper(upper: Path) -> None:
    (upper / "etc").mkdir()
    (upper / "etc" / "added").write_bytes(b"new file")
    os.mknod(upper / "etc" / "passwd", stat.S_IFCHR | 0o000, 0)  # whiteout
    (upper / "bin").mkdir()
    (upper / "bin" / "sh").write_bytes(b"#!changed")
    os.chmod(upper / "bin" / "sh", 0o755)


@pytest.mark.root
def test_diff_and_commit(store: Store, imported: dict[str, str], tmp_path: Path) -> None:
    box = store.create_container("app:1", name="box")
    _change_upper(box.upper)
    changes = {(c.kind, c.path) for c in store.diff("box")}
    assert (ChangeKind.ADDED, "/etc/added") in changes
    assert (ChangeKind.DELETED, "/etc/passwd") in changes
    assert (ChangeKind.CHANGED, "/bin/sh") in changes

    base = store.resolve("app:1")
    image = store.commit("box", "app:2", message="my change")
    assert image.names == ("app:2",)
    assert image.diff_ids[:2] == base.diff_ids and len(image.diff_ids) == 3
    assert image.layers[:2] == base.layers
    assert image.layers[2].media_type == OCI_LAYER_ZSTD
    assert image.manifest.config.media_type == OCI_CONFIG
    history = image.config["history"]
    assert history[:-1] == base.config["history"]
    assert history[-1]["comment"] == "my change"
    assert history[-1]["created_by"] == "layerfs commit box"
    assert image.config["config"] == base.config["config"]

    store.unpack("app:2", tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "etc" / "added").read_bytes() == b"new file"
    assert not (out / "etc" / "passwd").exists()
    assert (out / "bin" / "sh").read_bytes() == b"#!changed"
    assert (out / "etc" / "motd").read_bytes() == b"hello\n"

    gz = store.commit("box", "app:gz", compression=Compression.GZIP)
    assert gz.layers[2].media_type == OCI_LAYER_GZIP
    assert gz.diff_ids[2] == image.diff_ids[2], "same content, same diff_id"


@pytest.mark.root
def test_squash(store: Store, imported: dict[str, str], tmp_path: Path) -> None:
    image = store.squash("app:1", "flat")
    assert len(image.layers) == 1 and len(image.config["history"]) == 1
    store.unpack("app:1", tmp_path / "a")
    store.unpack("flat", tmp_path / "b")
    assert tree_files(tmp_path / "a") == tree_files(tmp_path / "b")


def test_import_with_ref_and_untagged(store: Store, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "one", [Image(None, [BASE])])
    (untagged,) = store.import_path(tmp_path / "one")
    assert untagged.names == ()
    assert store.images()[0].digest == untagged.digest
    (tagged,) = store.import_path(tmp_path / "one", "named:v1")
    assert tagged.names == ("named:v1",)
    assert len(store.layout.read_index().manifests) == 1, "the tag replaced the untagged entry"
    write_oci_layout(tmp_path / "two", [Image("a", [BASE]), Image("b", [TOP])])
    with pytest.raises(StoreError):
        store.import_path(tmp_path / "two", "x")


def test_bare_layout_tag_is_never_a_name(store: Store, tmp_path: Path) -> None:
    """umoci and skopeo write `oci:DIR:v1` as ref.name `v1`: a tag, not a repository."""
    write_oci_layout(tmp_path / "src", [Image("v1", [BASE]), Image("latest", [BASE, TOP])])
    assert [image.names for image in store.import_path(tmp_path / "src", ref_name="v1")] == [()]
    assert [image.names for image in store.import_path(tmp_path / "src")] == [(), ()]
    (image,) = store.import_path(tmp_path / "src", "app", ref_name="v1")
    assert image.names == ("app:latest",)
    (image,) = store.import_path(tmp_path / "src", "app:2", ref_name="latest")
    assert image.names == ("app:2",) and len(image.layers) == 2
    with pytest.raises(NotFoundError, match="'v1', 'latest'"):
        store.import_path(tmp_path / "src", ref_name="v2")
    assert sorted(n for i in store.images() for n in i.names) == ["app:2", "app:latest"]


def test_full_names_in_a_layout_are_kept(store: Store, tmp_path: Path) -> None:
    """skopeo `oci:DIR:alpine:3.19` and layerfs exports write NAME:TAG; containerd its own."""
    images = [Image("alpine:3.19", [BASE]), Image("localhost:5000/team/app:1", [BASE, TOP])]
    write_oci_layout(tmp_path / "src", images)
    index = json.loads((tmp_path / "src/index.json").read_text())
    index["manifests"][1]["annotations"] = {
        "io.containerd.image.name": "registry.example/app:2",
        "org.opencontainers.image.ref.name": "",
    }
    (tmp_path / "src/index.json").write_text(json.dumps(index))
    names = [image.names for image in store.import_path(tmp_path / "src")]
    assert names == [("alpine:3.19",), ("registry.example/app:2",)]
    (image,) = store.import_path(tmp_path / "src", "mine", ref_name="registry.example/app:2")
    assert "mine:latest" in image.names and len(image.layers) == 2


def test_import_rejects_corrupt_blob(store: Store, tmp_path: Path) -> None:
    digests = write_oci_layout(tmp_path / "src", [Image("bad:1", [BASE, TOP])])
    manifest = json.loads((tmp_path / "src/blobs/sha256" / digests["bad:1"][7:]).read_bytes())
    layer = tmp_path / "src/blobs/sha256" / manifest["layers"][1]["digest"][7:]
    data = layer.read_bytes()
    layer.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(DigestMismatchError):
        store.import_path(tmp_path / "src")
    assert store.images() == []
    assert not store.blobs.exists(manifest["layers"][1]["digest"])
    assert list(store.layout.tmp_dir.iterdir()) == []


def test_layer_not_matching_diff_id_is_never_unpacked(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    digests = write_oci_layout(src, [Image("liar:1", [BASE])])
    manifest = json.loads((src / "blobs/sha256" / digests["liar:1"][7:]).read_bytes())
    config_path = src / "blobs/sha256" / manifest["config"]["digest"][7:]
    config = json.loads(config_path.read_bytes())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    new_config = json.dumps(config).encode()
    (src / "blobs/sha256" / sha(new_config)[7:]).write_bytes(new_config)
    manifest["config"] = {
        "mediaType": OCI_CONFIG,
        "digest": sha(new_config),
        "size": len(new_config),
    }
    new_manifest = json.dumps(manifest).encode()
    (src / "blobs/sha256" / sha(new_manifest)[7:]).write_bytes(new_manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha(new_manifest),
                "size": len(new_manifest),
                "annotations": {"org.opencontainers.image.ref.name": "liar:1"},
            }
        ],
    }
    (src / "index.json").write_text(json.dumps(index))
    (image,) = store.import_path(src)
    with pytest.raises(DigestMismatchError):
        store.layer_dirs(image)
    assert list(store.layout.layers_dir.iterdir()) == []
    assert list(store.layout.tmp_dir.iterdir()) == []


def test_docker_schema2_manifest_is_converted(store: Store, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "src", [Image("d:1", [BASE, TOP])], flavour="docker")
    (image,) = store.import_path(tmp_path / "src")
    assert image.manifest.media_type == OCI_MANIFEST
    assert image.manifest.config.media_type == OCI_CONFIG
    assert {d.media_type for d in image.layers} == {OCI_LAYER_GZIP}
    assert len(store.layer_dirs(image)) == 2


def test_extra_layer_kinds(store: Store, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "src", [Image("plain:1", [[E("f", data=b"x")]], "none")])
    (image,) = store.import_path(tmp_path / "src")
    assert image.layers[0].digest == image.diff_ids[0]
    (layer,) = store.layer_dirs(image)
    assert (layer / "f").read_bytes() == b"x"


def test_default_root_of_uid_0_in_a_user_namespace_is_its_home(tmp_path: Path) -> None:
    """uid 0 of a user namespace (rootless podman) cannot write /var/lib: it is a user."""
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    code = "from layerfs.store import default_root; print(default_root())"
    out = python_as_namespace_root(code, env)
    assert out.strip() == str(tmp_path / ".local" / "share" / "layerfs")


def test_unprivileged_layer_format(
    store: Store, imported: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without root, layers record whiteouts as .wh. files and user.overlay.opaque."""
    with Stack(store.layer_dirs(store.resolve("app:1"))) as stack:
        expected = {p: stack.listdir(p) for p in ("/", "/etc", "/usr/lib")}
    for path in store.layout.layers_dir.iterdir():  # unpack again, as a user would
        shutil.rmtree(path)
    monkeypatch.setattr(privilege, "layer_format", UpperFormat.unprivileged)
    top, _ = store.layer_dirs(store.resolve("app:1"))
    assert (top / "etc" / ".wh.gone").is_file()
    assert os.getxattr(top / "usr" / "lib", "user.overlay.opaque") == b"y"
    with Stack(store.layer_dirs(store.resolve("app:1"))) as stack:
        assert {p: stack.listdir(p) for p in expected} == expected
