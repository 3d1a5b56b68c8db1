"""Images for the lazy-pull tests, made with the real tools and pushed to a test registry.

* :func:`build_layout`: an OCI layout made by ``umoci`` from a host tree, two layers (the
  second deletes a file, so it carries a whiteout, and adds one).
* :func:`push_zstd_chunked`: ``skopeo copy --dest-compress-format zstd:chunked`` into a
  layout, then that layout to the registry (skopeo keeps the TOC annotations).
* :class:`Containerd` and :func:`push_estargz`: a private ``containerd`` on a socket in tmp,
  and ``ctr-remote image convert --estargz --oci`` of the gzip image, pushed back.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from tests.registry.servers import RegistryServer

READY_TIMEOUT = 30.0  # seconds for containerd to answer
BIG = 3_000_000  # bytes of incompressible data in /data/big


def sh(*args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True, env=env
    )
    return done.stdout


def populate(root: Path) -> None:
    """The first layer's tree: every entry type the TOC formats carry."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("hello from a lazy layer\n")
    os.setxattr(root / "etc" / "motd", "user.origin", b"lazy")
    os.link(root / "etc" / "motd", root / "etc" / "motd.link")
    (root / "etc" / "gone").write_text("deleted by the second layer\n")
    (root / "data").mkdir(mode=0o750)
    (root / "data" / "big").write_bytes(random.Random(7).randbytes(BIG))
    (root / "data" / "holes").write_bytes(b"head" + bytes(1 << 20) + b"tail")
    (root / "data" / "empty").write_bytes(b"")
    os.mkfifo(root / "data" / "fifo")
    os.mknod(root / "data" / "null", 0o20666, os.makedev(1, 3))
    for index in range(20):
        (root / "data" / f"small-{index}").write_text(f"small file {index}\n" * (index + 1))


def build_layout(work: Path, name: str = "lazy") -> Path:
    """An OCI layout at ``work/layout`` holding ``name``: two layers made by umoci."""
    layout = work / "layout"
    bundle = work / "bundle"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{name}")
    sh("umoci", "unpack", "--image", f"{layout}:{name}", bundle)
    populate(bundle / "rootfs")
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{name}", bundle)
    (bundle / "rootfs" / "etc" / "gone").unlink()
    (bundle / "rootfs" / "etc" / "added").write_text("added by the second layer\n")
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{name}", bundle)
    shutil.rmtree(bundle)
    return layout


def push_gzip(layout: Path, name: str, registry: RegistryServer, dest: str) -> str:
    ref = f"{registry.host}/{dest}"
    sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{name}", f"docker://{ref}")
    return ref


def push_zstd_chunked(layout: Path, name: str, registry: RegistryServer, dest: str) -> str:
    """Recompress as zstd:chunked (into a layout of its own), then push it; return the ref."""
    chunked = layout.parent / f"zstd-chunked-{name}"
    sh(
        "skopeo",
        "copy",
        "-q",
        "--dest-compress",
        "--dest-compress-format",
        "zstd:chunked",
        f"oci:{layout}:{name}",
        f"oci:{chunked}:{name}",
    )
    ref = f"{registry.host}/{dest}"
    sh(
        "skopeo",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        f"oci:{chunked}:{name}",
        f"docker://{ref}",
    )
    return ref


class Containerd:
    """A containerd of our own: state, content and socket under *workdir*; stopped by pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "containerd.sock"
        self.config = workdir / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version = 2\n"
            f'root = "{workdir / "root"}"\n'
            f'state = "{workdir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
        )

    def __enter__(self) -> Containerd:
        with (self.workdir / "containerd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("containerd exited: " + self.log()[-2000:])
            with contextlib.suppress(subprocess.CalledProcessError):
                self.ctr("version")
                return self
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("containerd did not become ready")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return (self.workdir / "containerd.log").read_text(errors="replace")

    def ctr(self, *args: str | Path) -> str:
        return sh("ctr-remote", "--address", self.socket, *args)


def push_estargz(
    containerd: Containerd, gzip_ref: str, dest_ref: str, record: list[str] | None = None
) -> str:
    """Convert the gzip image *gzip_ref* to eStargz with ``ctr-remote`` and push it.

    *record* lists paths to put in the prioritised area (a ``--estargz-record-in`` file).
    """
    containerd.ctr("images", "pull", "--plain-http", gzip_ref)
    extra: list[str | Path] = []
    if record is not None:
        record_file = containerd.workdir / f"record-{len(os.listdir(containerd.workdir))}.json"
        record_file.write_text("".join(json.dumps({"path": p}) + "\n" for p in record))
        extra = ["--estargz-record-in", record_file]
    containerd.ctr("images", "convert", "--estargz", "--oci", *extra, gzip_ref, dest_ref)
    containerd.ctr("images", "push", "--plain-http", dest_ref)
    return dest_ref
