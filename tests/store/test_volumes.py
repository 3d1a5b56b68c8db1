"""Volumes: the API, containers that use them, the first copy, diff/commit, bundles, bad input."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs.errors import BadReferenceError, ConfigError, NotFoundError, StoreError
from layerfs.store import MountKind, MountRequest, Store
from layerfs.store.oci import Manifest
from layerfs.tar import open_decompressed

from .builders import E, Image, write_oci_layout
from .helpers import meta_tree

DATA_DIR = E("data", "dir", mode=0o750, uid=1000, gid=1000, mtime=1_600_000_000,
             xattrs=(("user.kind", b"dir"),))  # fmt: skip
BASE = [
    DATA_DIR,
    E("data/conf", data=b"conf\n", mode=0o640, uid=1000, gid=1001, mtime=1_650_000_000,
      xattrs=(("user.note", b"hello"),)),
    E("data/hard", "hardlink", target="data/conf"),
    E("data/setuid", data=b"#!x", mode=0o4755),
    E("data/sticky", "dir", mode=0o1777),
    E("data/sticky/deep", data=b"deep", uid=7, gid=8),
    E("data/link", "symlink", target="conf"),
    E("data/out", "symlink", target="/etc/passwd"),
    E("data/pipe", "fifo", mode=0o600),
    E("data/old", data=b"deleted by the top layer"),
    E("etc", "dir"),
    E("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    E("run", "dir"),
    E("var", "dir"),
    E("var/run", "symlink", target="/run"),
    E("var/up", "symlink", target="../../.."),
    E("var/lock", "symlink", target="../run/./lock"),
    E("file", data=b"a file"),
]  # fmt: skip
TOP = [
    DATA_DIR,
    E("data/old", "whiteout"),
    E("data/new", data=b"new in the top layer"),
]
VOLUMES = {"Volumes": {"/data": {}}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    write_oci_layout(
        tmp_path / "src",
        [Image("vol:1", [BASE, TOP], settings=VOLUMES), Image("plain:1", [BASE, TOP])],
    )
    store = Store.open(tmp_path / "store")
    store.import_path(tmp_path / "src")
    return store


def _state(store: Store) -> tuple[object, ...]:
    """Everything a failed create must leave as it was."""
    return (
        [c.name for c in store.containers()],
        [v.name for v in store.volumes.list()],
        sorted(os.listdir(store.layout.tmp_dir)),
    )


def test_parse_mount_requests() -> None:
    parse = MountRequest.parse
    assert parse("/data") == MountRequest(MountKind.VOLUME, None, "/data")
    assert parse("db:/var/lib/db") == MountRequest(MountKind.VOLUME, "db", "/var/lib/db")
    assert parse("db:/x/./y/../z/:ro") == MountRequest(MountKind.VOLUME, "db", "/x/z", True)
    assert parse("/srv//host/:/mnt:rw") == MountRequest(MountKind.BIND, "/srv/host", "/mnt")
    for bad in ("data", "db:rel", "db:/x:rx", "db:/x:ro,rw", "a:b:c:d", ":/x", "db:/", "/"):
        with pytest.raises(ConfigError):
            parse(bad)
    for bad_name in ("-db:/x", "d b:/x", ".db:/x", "x" * 129 + ":/x"):
        with pytest.raises(BadReferenceError):
            parse(bad_name)


def test_volume_api(store: Store) -> None:
    volumes = store.volumes
    made = volumes.create("db", {"tier": "gold"})
    assert (made.name, made.anonymous, dict(made.labels)) == ("db", False, {"tier": "gold"})
    assert made.data.is_dir() and os.listdir(made.data) == []
    random = volumes.create()
    assert len(random.name) == 64 and not random.anonymous
    assert [v.name for v in volumes.list()] == sorted(["db", random.name])
    assert volumes.get("db") == made
    described = volumes.describe("db")
    assert described["labels"] == {"tier": "gold"} and described["containers"] == []
    assert described["path"] == str(made.data)
    with pytest.raises(StoreError, match="already exists"):
        volumes.create("db")
    with pytest.raises(BadReferenceError):
        volumes.create("no/slash")
    with pytest.raises(NotFoundError):
        volumes.get("nothing")
    with pytest.raises(NotFoundError):
        volumes.remove("nothing")
    assert volumes.remove("db") == made
    assert not made.path.exists()
    assert os.listdir(store.layout.tmp_dir) == []


def test_create_with_named_bind_and_anonymous_volumes(store: Store, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    box = store.create_container(
        "vol:1", "box", volumes=["db:/srv/db", f"{host}:/mnt/host:ro", "/scratch"]
    )
    db, bind, scratch, data = box.mounts
    assert (db.kind, db.source, db.path, db.readonly, db.anonymous) == (
        MountKind.VOLUME, "db", "/srv/db", False, False
    )  # fmt: skip
    assert (bind.kind, bind.source, bind.path, bind.readonly) == (
        MountKind.BIND, str(host), "/mnt/host", True
    )  # fmt: skip
    assert scratch.anonymous and data.anonymous and data.target == "/data"
    assert store.container("box").mounts == box.mounts  # recorded in container.json
    names = {v.name: v for v in store.volumes.list()}
    assert set(names) == {"db", scratch.source, data.source}
    assert not names["db"].anonymous and names[data.source].anonymous
    assert [c.name for c in store.volumes.users("db")] == ["box"]
    assert store.volumes.describe(data.source)["containers"] == ["box"]
    # a new volume over a path where the image has nothing starts empty
    assert os.listdir(names["db"].data) == [] and os.listdir(names[scratch.source].data) == []
    # a request at the image volume's path replaces the anonymous volume there
    other = store.create_container("vol:1", "other", volumes=["db:/data"])
    assert [(m.source, m.path) for m in other.mounts] == [("db", "/data")]


def test_targets_resolve_symlinks_inside_the_image(store: Store) -> None:
    specs = ["a:/var/run/sock", "b:/var/lock/x", "c:/var/run/../etc/x"]
    box = store.create_container("plain:1", volumes=specs)
    assert [m.path for m in box.mounts] == ["/run/sock", "/run/lock/x", "/var/etc/x"]
    assert [m.target for m in box.mounts] == ["/var/run/sock", "/var/lock/x", "/var/etc/x"]


@pytest.mark.root
def test_first_copy_keeps_metadata(store: Store) -> None:
    box = store.create_container("vol:1", "box")
    (data,) = box.mounts
    copy = store.volumes.get(data.source).data
    tree = meta_tree(copy)
    assert sorted(tree) == [
        "/", "/conf", "/hard", "/link", "/new", "/out", "/pipe", "/setuid", "/sticky",
        "/sticky/deep",
    ]  # fmt: skip
    kind, mode, uid, gid, mtime, xattrs, _, _, _ = tree["/"]
    assert (kind, mode, uid, gid, mtime) == (stat.S_IFDIR, 0o750, 1000, 1000, 1_600_000_000 * 10**9)
    assert xattrs == (("user.kind", b"dir"),)
    conf = tree["/conf"]
    assert conf[1:6] == (0o640, 1000, 1001, 1_650_000_000 * 10**9, (("user.note", b"hello"),))
    assert os.lstat(copy / "hard").st_ino == os.lstat(copy / "conf").st_ino
    assert tree["/setuid"][1] == 0o4755 and tree["/sticky"][1] == 0o1777
    assert tree["/sticky/deep"][2:4] == (7, 8)
    assert os.readlink(copy / "out") == "/etc/passwd"  # copied as a link, never followed
    assert stat.S_ISFIFO(os.lstat(copy / "pipe").st_mode)
    assert (copy / "new").read_bytes() == b"new in the top layer"


@pytest.mark.root
@pytest.mark.kernel
def test_first_copy_equals_the_kernel_overlay_view(store: Store, tmp_path: Path) -> None:
    """The copy is what kernel overlayfs shows at the volume's path, metadata included."""
    box = store.create_container("vol:1", "box")
    copy = store.volumes.get(box.mounts[0].source).data
    lowers = store.mount_spec("vol:1").lowers
    merged = tmp_path / "merged"
    merged.mkdir()
    options = "lowerdir=" + ":".join(str(p) for p in lowers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        expected = meta_tree(merged / "data")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert meta_tree(copy) == expected


def test_existing_volume_is_never_overwritten(store: Store) -> None:
    mine = store.volumes.create("mine")
    (mine.data / "kept").write_text("mine")
    store.create_container("vol:1", "a", volumes=["mine:/data"])
    assert os.listdir(mine.data) == ["kept"]
    # an empty volume that a container already uses is that container's: not filled either
    shared = store.volumes.create("shared")
    store.create_container("plain:1", "b", volumes=["shared:/elsewhere"])
    store.create_container("vol:1", "c", volumes=["shared:/data"])
    assert os.listdir(shared.data) == []
    # an empty volume nobody uses yet gets the image's content
    fresh = store.volumes.create("fresh")
    store.create_container("vol:1", "d", volumes=["fresh:/data"])
    assert "conf" in os.listdir(fresh.data)


def test_fill_gives_way_to_a_concurrent_writer(store: Store) -> None:
    volume = store.volumes.create("raced")

    def make(dest: Path) -> None:
        dest.mkdir()
        (dest / "copy").write_text("from the image")
        (volume.data / "theirs").write_text("written meanwhile")

    with store.writing():
        assert store.volumes.dir.fill(volume, make) is False
    assert os.listdir(volume.data) == ["theirs"]
    assert os.listdir(store.layout.tmp_dir) == []


@pytest.mark.parametrize(
    ("specs", "error"),
    [
        (["rel/path"], "not an absolute path"),
        (["db:rel"], "not an absolute path"),
        (["/no/such/host/dir:/x"], "No such file"),
        (["bad name:/x"], "invalid volume name"),
        (["db:/var/up/x"], "leads out of the image"),
        (["db:/file"], "not a directory in the image"),
        (["db:/file/below"], "not a directory in the image"),
        (["db:/x", "other:/x/"], "same path"),
        (["db:/run/x", "other:/var/run/x"], "same path"),
        (["db:/x:rx"], "give ro or rw"),
    ],
)
def test_bad_input_creates_nothing(store: Store, specs: list[str], error: str) -> None:
    before = _state(store)
    with pytest.raises((ConfigError, BadReferenceError), match=error):
        store.create_container("vol:1", "box", volumes=specs)
    assert _state(store) == before


def test_bind_sources_match_the_image(store: Store, tmp_path: Path) -> None:
    host_file = tmp_path / "hosts"
    host_file.write_text("127.0.0.1 localhost\n")
    before = _state(store)
    with pytest.raises(ConfigError, match=r"bind source .* is not a directory"):
        store.create_container("vol:1", volumes=[f"{host_file}:/etc"])
    with pytest.raises(ConfigError, match=r"bind source .* is a directory"):
        store.create_container("vol:1", volumes=[f"{tmp_path}:/file"])
    assert _state(store) == before
    box = store.create_container("vol:1", volumes=[f"{host_file}:/file", f"{host_file}:/etc/x"])
    assert [(m.kind, m.path) for m in box.mounts[:2]] == [
        (MountKind.BIND, "/file"), (MountKind.BIND, "/etc/x")
    ]  # fmt: skip


def test_a_bad_name_after_good_volumes_creates_nothing(store: Store) -> None:
    store.create_container("plain:1", "taken")
    before = _state(store)
    with pytest.raises(StoreError, match="already in use"):
        store.create_container("vol:1", "taken", volumes=["db:/x"])
    assert _state(store) == before


def test_symlink_loop_is_refused(store: Store, tmp_path: Path) -> None:
    loop = [E("a", "symlink", target="b"), E("b", "symlink", target="a")]
    write_oci_layout(tmp_path / "loop", [Image("loop:1", [loop])])
    store.import_path(tmp_path / "loop")
    with pytest.raises(ConfigError, match="too many levels"):
        store.create_container("loop:1", volumes=["db:/a/x"])
    assert store.volumes.list() == []


def test_rm_keeps_volumes_and_rm_v_removes_anonymous_ones(store: Store) -> None:
    first = store.create_container("vol:1", "first", volumes=["db:/srv/db"])
    anon = first.mounts[1].source
    with pytest.raises(StoreError, match="in use by container first"):
        store.volumes.remove("db")
    with pytest.raises(StoreError, match="in use"):
        store.volumes.remove(anon)
    store.remove_container("first")
    assert {v.name for v in store.volumes.list()} == {"db", anon}  # dangling, kept
    assert store.volumes.users(anon) == []
    second = store.create_container("vol:1", "second", volumes=["db:/srv/db", f"{anon}:/old"])
    third = store.create_container("vol:1", "third", volumes=[f"{anon}:/again"])
    store.remove_container("second", volumes=True)
    names = {v.name for v in store.volumes.list()}
    assert second.mounts[2].source not in names  # its own anonymous volume is gone
    assert {"db", anon} <= names  # named: kept; anonymous but still used by third: kept
    store.remove_container("third", volumes=True)
    # third's own anonymous volume goes; one it named, as docker, stays
    assert third.mounts[1].anonymous and not third.mounts[0].anonymous
    assert {v.name for v in store.volumes.list()} == {"db", anon}
    assert os.listdir(store.layout.tmp_dir) == []


def test_prune_removes_only_unused_volumes(store: Store) -> None:
    store.volumes.create("unused")
    used = store.create_container("vol:1", "used", volumes=["db:/srv/db"])
    gone = store.create_container("vol:1", "gone")
    store.remove_container("gone")
    dangling = gone.mounts[0].source
    assert [v.name for v in store.volumes.prune()] == [dangling]
    kept = {v.name for v in store.volumes.list()}
    assert kept == {"unused", "db", used.mounts[1].source}
    assert [v.name for v in store.volumes.prune(all=True)] == ["unused"]
    assert {v.name for v in store.volumes.list()} == {"db", used.mounts[1].source}


def test_gc_never_removes_volumes(store: Store) -> None:
    box = store.create_container("vol:1", "box", volumes=["db:/srv/db"])
    store.volumes.create("unused")
    store.remove_image("vol:1")
    store.gc()
    names = {v.name for v in store.volumes.list()}
    assert names == {"db", "unused", box.mounts[1].source}
    store.remove_container("box")  # runs gc too
    assert {v.name for v in store.volumes.list()} == names


def _layer_names(store: Store, ref: str) -> list[str]:
    image = store.resolve(ref)
    top = Manifest.from_bytes(store.blobs.get(image.digest)).layers[-1]
    with store.blobs.open(top.digest) as raw, open_decompressed(raw) as plain:
        data = plain.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_diff_and_commit_leave_mount_paths_out(store: Store, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    box = store.create_container("vol:1", "box", volumes=["db:/srv/db", f"{host}:/mnt"])
    upper = box.upper
    for path in ("srv/db/hidden", "data/hidden", "mnt/hidden", "srv/kept", "layer"):
        (upper / path).parent.mkdir(parents=True, exist_ok=True)
        (upper / path).write_text("x")
    os.mknod(upper / "data" / "conf", stat.S_IFCHR, 0)  # a deletion below a volume path
    changes = [f"{c.kind.value} {c.path}" for c in store.diff("box")]
    assert changes == ["A /layer", "A /srv", "A /srv/kept"]
    store.commit("box", "vol:2")
    assert sorted(_layer_names(store, "vol:2")) == ["layer", "srv", "srv/kept"]


def test_runtime_config_binds_volumes(store: Store, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    store.create_container(
        "vol:1", "box", volumes=["db:/data/db:ro", f"{host}:/mnt/host", "x:/var/run/x"]
    )
    mounts = store.runtime_config("box", ["/bin/true"])["mounts"]
    binds = [m for m in mounts if m["type"] == "bind"]
    box = store.container("box")
    anon = store.volumes.get(box.mounts[3].source).data
    assert binds == [
        {"destination": "/data", "type": "bind", "source": str(anon), "options": ["rbind", "rw"]},
        {"destination": "/data/db", "type": "bind", "source": str(store.volumes.get("db").data),
         "options": ["rbind", "ro"]},
        {"destination": "/mnt/host", "type": "bind", "source": str(host),
         "options": ["rbind", "rw"]},
        {"destination": "/run/x", "type": "bind", "source": str(store.volumes.get("x").data),
         "options": ["rbind", "rw"]},
    ]  # fmt: skip
    assert mounts[: len(mounts) - 4] == [m for m in mounts if m["type"] != "bind"]


def test_records_without_mounts_still_load(store: Store) -> None:
    box = store.create_container("plain:1", "old")
    record = box.path / "container.json"
    text = record.read_text().replace('"mounts": []', '"unused": []')
    record.write_text(text)
    assert store.container("old").mounts == ()


@pytest.fixture
def no_layers(store: Store, tmp_path: Path) -> Iterator[str]:
    write_oci_layout(tmp_path / "empty", [Image("empty:1", [], settings=VOLUMES)])
    store.import_path(tmp_path / "empty")
    yield "empty:1"


def test_image_without_layers(store: Store, no_layers: str) -> None:
    box = store.create_container(no_layers, volumes=["db:/srv"])
    assert [m.path for m in box.mounts] == ["/srv", "/data"]
    assert os.listdir(store.volumes.get("db").data) == []
