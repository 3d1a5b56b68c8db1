"""Images made by the builders in Debian, without network: buildah, umoci, skopeo, ctr-remote.

Each builder gets the same source tree (modes, owners, setuid, sticky, hard links, symlinks,
xattrs, devices, a FIFO, odd and long names) and then the same changes in a second layer
(deleted files and directories, a non-empty directory replaced by a file and another by a
symlink, a directory deleted and made again, changed modes, owners and xattrs). Every image
is described by an :class:`Built`: how ``layerfs import`` reaches it and an OCI layout
reference that ``umoci unpack`` reads as the expected tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.lazy.tools import Containerd

TOOL_TIMEOUT = 120  # seconds for one builder command


def sh(*args: str | Path, cwd: Path | None = None) -> str:
    """Run a builder command; a failure shows its stderr."""
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
        cwd=cwd,
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Built:
    """An image a builder made.

    ``layerfs import SOURCE [NAME]`` imports it (``SOURCE`` is ``PATH[:REFNAME]``, ``NAME`` is
    given when the source names no repository) and must call it ``named``; ``reference`` is
    the ``LAYOUT:TAG`` that ``umoci unpack`` reads for the expected tree.
    """

    source: str
    reference: str
    name: str | None
    named: str


# -- the tree every builder gets ---------------------------------------------------------------


def write_source(root: Path, *, devices: bool = True) -> None:
    """The first layer's content."""
    for d in ("etc", "bin", "home/u", "srv/dir-to-file", "srv/dir-to-link", "opt/gone/deep"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("usr/share/doc/pkg", "var/empty", "tmp", "run", "dev", "a/" * 30):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/motd").write_text("hello\n")
    os.chmod(root / "etc/motd", 0o640)
    os.setxattr(root / "etc/motd", "user.note", b"kept")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/gone").write_text("deleted in layer 2\n")
    (root / "bin/tool").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    os.chmod(root / "bin/tool", 0o4755)
    os.link(root / "bin/tool", root / "bin/hard")
    os.symlink("tool", root / "bin/link")
    os.symlink("/etc/motd", root / "bin/abs")
    os.symlink("nowhere", root / "bin/dangling")
    (root / "home/u/notes").write_text("mine\n")
    os.chmod(root / "home/u/notes", 0o600)
    os.chown(root / "home/u", 1000, 1000)
    os.chown(root / "home/u/notes", 1000, 100)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/empty", 0o700)
    for name in ("a", "b"):
        (root / "srv/dir-to-file" / name).write_text(name)
    (root / "srv/dir-to-link/x").write_text("x")
    (root / "opt/gone/deep/file").write_text("gone\n")
    (root / "usr/share/doc/pkg/copyright").write_text("(c)\n")
    (root / "usr/share/doc/pkg/README").write_text("read me\n")
    (root / "ünïcødé name.txt").write_text("u\n")
    (root / ("n" * 255)).write_text("long\n")
    (root / ("a/" * 30) / "leaf").write_text("deep\n")
    (root / "empty").write_bytes(b"")
    os.mkfifo(root / "run/fifo", 0o620)
    if devices:
        os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))


def change_tree(root: Path) -> None:
    """The second layer's changes, made in place on an unpacked first layer."""
    (root / "etc/gone").unlink()
    shutil.rmtree(root / "opt/gone")
    shutil.rmtree(root / "srv/dir-to-file")
    (root / "srv/dir-to-file").write_text("now a file\n")
    shutil.rmtree(root / "srv/dir-to-link")
    os.symlink("../etc", root / "srv/dir-to-link")
    shutil.rmtree(root / "usr/share/doc/pkg")
    (root / "usr/share/doc/pkg").mkdir()
    (root / "usr/share/doc/pkg/NEWS").write_text("made again\n")
    os.chmod(root / "etc/motd", 0o600)
    os.chown(root / "etc/passwd", 0, 42)
    os.setxattr(root / "etc/passwd", "user.changed", b"yes")
    (root / "bin/link").unlink()
    os.symlink("/bin/tool", root / "bin/link")
    (root / "etc/new").write_text("added in layer 2\n")
    os.link(root / "etc/new", root / "etc/new.hard")


# -- buildah -----------------------------------------------------------------------------------


class Buildah:
    """buildah with its own storage (vfs: no mounts) below *work*."""

    def __init__(self, work: Path) -> None:
        self.base = [
            "buildah",
            "--root",
            str(work / "storage"),
            "--runroot",
            str(work / "run"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str | Path) -> str:
        return sh(*self.base, *args).strip()


def build_buildah(work: Path) -> dict[str, Built]:
    """`from scratch`, `copy`, a commit; `from` it, changes, `copy`, commits in both formats.

    The changes of the second stage are made in the working container's vfs directory (what
    `buildah mount` returns), as a `run` step would, without running anything.
    """
    src = work / "src"
    write_source(src)
    (work / "extra").write_text("copied with --chown\n")
    buildah = Buildah(work)
    first = buildah("from", "scratch")
    buildah("copy", first, f"{src}/", "/")
    buildah("copy", "--chown", "1000:100", first, work / "extra", "/home/u/extra")
    buildah("config", "--cmd", "/bin/tool", "--env", "A=1", first)
    buildah("commit", "-q", first, "localhost/stage1")
    second = buildah("from", "--pull=never", "localhost/stage1")
    change_tree(Path(buildah("mount", second)))
    buildah("umount", second)
    buildah("copy", second, work / "extra", "/etc/copied")
    layout, archive = work / "buildah-oci", work / "buildah-docker.tar"
    buildah("commit", "-q", "--format", "oci", second, f"oci:{layout}:v1")
    buildah("commit", "-q", "--format", "docker", second, f"docker-archive:{archive}:builder/d:1")
    # umoci reads OCI layouts only: the docker-archive's expected tree comes from skopeo's copy
    sh("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{work / 'ref-docker'}:d")
    return {
        "buildah-oci": Built(f"{layout}:v1", f"{layout}:v1", "real/buildah", "real/buildah:latest"),
        "buildah-docker-archive": Built(
            str(archive), f"{work / 'ref-docker'}:d", None, "docker.io/builder/d:1"
        ),
    }


# -- umoci -------------------------------------------------------------------------------------


def build_umoci(work: Path) -> dict[str, Built]:
    """Two `repack`s (the second with a directory turned into a file), then `insert`s."""
    layout = work / "umoci"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:repack")
    for stage, change in (("b1", write_source), ("b2", change_tree)):
        bundle = work / stage
        sh("umoci", "unpack", "--image", f"{layout}:repack", bundle)
        change(bundle / "rootfs")
        sh("umoci", "repack", "--image", f"{layout}:repack", bundle)
    sh("umoci", "tag", "--image", f"{layout}:repack", "insert")
    replacement = work / "replacement"
    replacement.mkdir()
    (replacement / "only").write_text("the only file left\n")
    (work / "inserted").write_text("inserted\n")
    sh("umoci", "insert", "--image", f"{layout}:insert", "--opaque", replacement, "/usr/share")
    sh("umoci", "insert", "--image", f"{layout}:insert", "--whiteout", "/srv/dir-to-link")
    sh("umoci", "insert", "--image", f"{layout}:insert", work / "inserted", "/etc/inserted")
    return {
        "umoci-repack": Built(
            f"{layout}:repack", f"{layout}:repack", "real/umoci:repack", "real/umoci:repack"
        ),
        "umoci-insert": Built(
            f"{layout}:insert", f"{layout}:insert", "real/umoci:insert", "real/umoci:insert"
        ),
    }


# -- skopeo ------------------------------------------------------------------------------------


def gzip_reference(work: Path, transport: str, name: str) -> str:
    """An OCI layout umoci can read (gzip layers) of the image at *transport*."""
    ref = work / f"ref-{name}"
    sh("skopeo", "copy", "-q", "--dest-compress-format", "gzip", transport, f"oci:{ref}:{name}")
    return f"{ref}:{name}"


def build_skopeo(work: Path, built: dict[str, Built]) -> dict[str, Built]:
    """Conversions: gzip, zstd, zstd:chunked, uncompressed, docker-archive, oci-archive.

    skopeo 1.9.3 hangs converting umoci's unpadded `insert` layers to zstd:chunked, so the
    conversions start from images without them.
    """
    repack, insert = built["umoci-repack"].reference, built["umoci-insert"].reference
    buildah = built["buildah-oci"].reference  # uncompressed layers: gzip is a real conversion
    out: dict[str, Built] = {}
    for fmt, src in (("gzip", buildah), ("zstd", repack), ("zstd:chunked", buildah)):
        name = fmt.replace(":", "-")
        layout = work / f"skopeo-{name}"
        sh("skopeo", "copy", "-q", "--dest-compress-format", fmt, f"oci:{src}", f"oci:{layout}:c")
        ref = f"{layout}:c" if fmt == "gzip" else gzip_reference(work, f"oci:{layout}:c", name)
        out[f"skopeo-{name}"] = Built(
            f"{layout}:c", ref, f"real/skopeo:{name}", f"real/skopeo:{name}"
        )
    plain_dir = work / "skopeo-dir"
    sh("skopeo", "copy", "-q", "--dest-decompress", f"oci:{insert}", f"dir:{plain_dir}")
    plain = work / "skopeo-uncompressed"
    sh("skopeo", "copy", "-q", "--dest-oci-accept-uncompressed-layers", f"dir:{plain_dir}",
       f"oci:{plain}:u")  # fmt: skip
    out["skopeo-uncompressed"] = Built(f"{plain}:u", insert, "real/skopeo", "real/skopeo:latest")
    archive = work / "skopeo-docker.tar"
    sh("skopeo", "copy", "-q", f"oci:{insert}", f"docker-archive:{archive}:skopeo/insert:1")
    out["skopeo-docker-archive"] = Built(
        f"{archive}:skopeo/insert:1", insert, None, "docker.io/skopeo/insert:1"
    )
    oci_archive = work / "skopeo-oci.tar"
    sh("skopeo", "copy", "-q", f"oci:{insert}", f"oci-archive:{oci_archive}:insert")
    out["skopeo-oci-archive"] = Built(
        f"{oci_archive}:insert", insert, "real/skopeo:oci-archive", "real/skopeo:oci-archive"
    )
    return out


# -- stargz-snapshotter's ctr-remote (needs a containerd of its own) ---------------------------


def build_ctr_remote(work: Path, built: dict[str, Built]) -> dict[str, Built]:
    """eStargz and zstd:chunked conversions of the umoci `insert` image, exported as OCI
    archives named by containerd's `io.containerd.image.name` annotation.

    The containerd is the test's own (:class:`tests.lazy.tools.Containerd`); images are
    imported without unpacking, so it mounts nothing.
    """
    source = work / "ctr-source.tar"
    insert = built["umoci-insert"].reference
    sh("skopeo", "copy", "-q", f"oci:{insert}", f"docker-archive:{source}:src/insert:1")
    out: dict[str, Built] = {}
    with Containerd(work / "containerd") as containerd:
        containerd.ctr("images", "import", "--no-unpack", source)
        (imported,) = containerd.ctr("images", "ls", "-q").split()
        for flag, name in (("--estargz", "esgz"), ("--zstdchunked", "zstdchunked")):
            containerd.ctr("images", "convert", flag, "--oci", imported, f"converted/{name}:1")
            archive = work / f"ctr-{name}.tar"
            containerd.ctr("images", "export", archive, f"converted/{name}:1")
            ref = gzip_reference(work, f"oci-archive:{archive}", name)
            out[f"ctr-remote-{name}"] = Built(str(archive), ref, None, f"converted/{name}:1")
    return out


def diff_ids(reference: str) -> list[str]:
    """The ``rootfs.diff_ids`` of ``LAYOUT:TAG``: the uncompressed layers it stands for."""
    layout, tag = reference.rsplit(":", 1)
    index = json.loads((Path(layout) / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    blobs = Path(layout) / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    return list(config["rootfs"]["diff_ids"])
