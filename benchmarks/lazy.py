"""Lazy pull against full pull + mount, over a throttled loopback link.

``python -m benchmarks.lazy [--quick] [--rtt-ms 20] [--mbit 100] [--size-mb 150]``

Builds a Debian-sized single-layer image from this host's own files (``/usr/bin``,
``/usr/lib``, perl's library and what ``sh`` and ``perl`` load), pushes it to a private
``docker-registry`` on 127.0.0.1 as zstd:chunked (skopeo) and as eStargz (ctr-remote, with a
private containerd), and reaches the registry through :class:`ThrottleProxy`. For each format
and command (``sh -c true``, ``perl -e 1``) it measures, in the same run and alternating:

* **full**: ``layerfs pull``, then ``layerfs mount`` of the image and the command run in it
  with ``chroot``; time from the start of the pull to the end of the command;
* **lazy**: ``layerfs pull --lazy``, then the command's first reads: every file the command
  opens (found with ``strace`` on the unpacked tree) read through the lazy layer reader; time
  to the end of those reads and the bytes fetched by then, with and without background
  completion running, and the time background completion takes.

The mount cannot serve a TOC-backed layer yet, so the lazy first command is its file reads,
not an exec; the report says so. Results: ``benchmarks/results/<date>-<host>/lazy.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.throttle import ThrottleProxy
from layerfs.lazy.completion import Completion
from layerfs.lazy.remote import RegistryRemote
from layerfs.store import Store

REPO = Path(__file__).resolve().parent.parent
LAYERFS = str(Path(sys.executable).parent / "layerfs")
RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = {"sh": ["sh", "-c", "true"], "perl": ["perl", "-e", "1"]}
SOURCES = ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu", "/usr/share/perl", "/etc")
OPEN_RE = re.compile(r'(?:openat|execve)\([^"]*"([^"]+)"[^)]*\)\s+=\s+(\d+)')


@dataclass
class Sample:
    format: str
    command: str
    mode: str  # full, lazy, lazy-no-prefetch
    first_command_s: float
    fetched_bytes: int
    image_bytes: int
    completion_s: float | None = None


def sh(*args: str | Path) -> str:
    env = {**os.environ, "LC_ALL": "C"}
    done = subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True, env=env
    )
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_rootfs(root: Path, budget: int) -> None:
    """Host files up to *budget* bytes, plus the usr-merge links, sh and perl's closure."""
    used = 0
    wanted = {"/usr/bin/dash", "/usr/bin/sh", "/usr/bin/perl"}
    for binary in ("/usr/bin/dash", "/usr/bin/perl"):
        for line in sh("ldd", binary).splitlines():
            match = re.search(r"(/\S+)", line)
            if match:  # the soname link (in its real directory) and the file it names
                found = match.group(1)
                wanted.add(
                    os.path.join(os.path.realpath(os.path.dirname(found)), os.path.basename(found))
                )
                wanted.add(os.path.realpath(found))
    for source in SOURCES:
        for dirpath, _dirs, files in sorted(os.walk(source)):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if used >= budget and path not in wanted and not path.startswith("/usr/share/perl"):
                    continue
                used += _copy(path, root)
    for path in wanted:
        _copy(path, root)
    for link, target in (
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ):
        if not (root / link).exists():
            os.symlink(target, root / link)
    _copy("/usr/lib64/ld-linux-x86-64.so.2", root)  # a link into usr/lib/<triplet>
    (root / "dev").mkdir(exist_ok=True)
    if not os.path.lexists(root / "dev" / "null"):
        os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def _copy(path: str, root: Path) -> int:
    target = root / path.lstrip("/")
    if os.path.lexists(target):
        return 0
    try:
        st = os.lstat(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            return 0
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            return 0
        shutil.copy2(path, target)
        return st.st_size
    except OSError:
        return 0


def opened_files(rootfs: Path, command: list[str]) -> list[str]:
    """Absolute in-image paths the command opens or executes successfully, in order."""
    log = rootfs.parent / "strace.log"
    sh("strace", "-f", "-qq", "-e", "trace=openat,execve", "-o", log, "chroot", rootfs, *command)
    seen: list[str] = []
    for line in log.read_text().splitlines():
        match = OPEN_RE.search(line)
        if match and match.group(1).startswith("/"):
            real = _resolve(rootfs, match.group(1))
            if real and real not in seen:
                seen.append(real)
    return seen


def _resolve(rootfs: Path, path: str) -> str | None:
    """*path* inside the image with its symlinks resolved inside the image."""
    parts: list[str] = []
    pending = [p for p in path.split("/") if p]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            parts = parts[:-1]
            continue
        host = rootfs.joinpath(*parts, part)
        if host.is_symlink() and hops < 40:
            hops += 1
            target = os.readlink(host)
            pending = [p for p in target.split("/") if p] + pending
            if target.startswith("/"):
                parts = []
            continue
        parts.append(part)
    resolved = "/" + "/".join(parts)
    return resolved if rootfs.joinpath(*parts).is_file() else None


class Registry:
    """A docker-registry on 127.0.0.1 with filesystem storage under *work*; stopped by pid."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        config = work / "registry.yml"
        config.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
            f"http:\n  addr: {self.host}\nlog:\n  level: error\n"
        )
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def push_images(work: Path, registry: Registry, layout: Path) -> dict[str, str]:
    """The image as zstd:chunked and as eStargz in the registry: format -> repository:tag."""
    sh(
        "skopeo",
        "copy",
        "-q",
        "--dest-compress",
        "--dest-compress-format",
        "zstd:chunked",
        f"oci:{layout}:img",
        f"oci:{work / 'zc'}:img",
    )
    sh(
        "skopeo",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        f"oci:{work / 'zc'}:img",
        f"docker://{registry.host}/bench/img:zstd-chunked",
    )
    sh(
        "skopeo",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        f"oci:{layout}:img",
        f"docker://{registry.host}/bench/img:gzip",
    )
    with containerd(work / "containerd") as ctr:
        ctr("images", "pull", "--plain-http", f"{registry.host}/bench/img:gzip")
        ctr(
            "images",
            "convert",
            "--estargz",
            "--oci",
            f"{registry.host}/bench/img:gzip",
            f"{registry.host}/bench/img:estargz",
        )
        ctr("images", "push", "--plain-http", f"{registry.host}/bench/img:estargz")
    return {"zstd:chunked": "bench/img:zstd-chunked", "estargz": "bench/img:estargz"}


@contextlib.contextmanager
def containerd(work: Path) -> Iterator[Callable[..., str]]:
    work.mkdir(parents=True)
    socket_path = work / "sock"
    config = work / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{work / "root"}"\nstate = "{work / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket_path}"\n'
    )
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.1)
        yield lambda *args: sh("ctr-remote", "--address", socket_path, *args)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_full(root: Path, ref: str, command: list[str], mnt: Path) -> float:
    began = time.monotonic()
    sh(LAYERFS, "pull", "--insecure", "-q", "--root", root, ref)
    sh(LAYERFS, "mount", "--root", root, ref, mnt)
    try:
        sh("mount", "--bind", "/dev/null", mnt / "dev" / "null")  # FUSE mounts are nodev
        try:
            sh("chroot", mnt, *command)
            return time.monotonic() - began
        finally:
            sh("umount", mnt / "dev" / "null")
    finally:
        sh(LAYERFS, "umount", mnt)


def run_lazy(
    root: Path, ref: str, files: list[str], prefetch: bool
) -> tuple[float, int, float | None]:
    began = time.monotonic()
    extra = [] if prefetch else ["--no-prefetch"]
    sh(LAYERFS, "pull", "--lazy", "--insecure", "-q", "--root", root, *extra, ref)
    store = Store.open(root)
    image = store.resolve(ref)
    with RegistryRemote() as remote:
        completion = Completion(store, image, remote).start() if prefetch else None
        record = store.lazy.record(image.layers[0].digest)
        assert record is not None
        layer = remote.layer(store.lazy, record)
        for path in files:
            if layer.toc.get(path) is not None:
                layer.read_file(path)
        first = time.monotonic() - began
        fetched = remote.statistics().bytes
        done: float | None = None
        if completion is not None:
            completion.wait_done()
            done = time.monotonic() - began
    return first, fetched, done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.lazy", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="a small image, one repetition")
    p.add_argument("--rtt-ms", type=float, default=20.0)
    p.add_argument("--mbit", type=float, default=100.0)
    p.add_argument("--size-mb", type=int, default=150, help="uncompressed image size budget")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--results", type=Path, default=RESULTS, help="where lazy.json goes")
    args = p.parse_args(argv)
    size = 20 if args.quick else args.size_mb
    reps = 1 if args.quick else args.reps
    work = Path(tempfile.mkdtemp(prefix="layerfs-bench-lazy-"))
    samples: list[Sample] = []
    registry = Registry(work / "registry")
    try:
        rootfs = work / "bundle" / "rootfs"
        sh("umoci", "init", "--layout", work / "layout")
        sh("umoci", "new", "--image", f"{work / 'layout'}:img")
        sh("umoci", "unpack", "--image", f"{work / 'layout'}:img", work / "bundle")
        build_rootfs(rootfs, size << 20)
        sh("umoci", "repack", "--image", f"{work / 'layout'}:img", work / "bundle")
        files = {name: opened_files(rootfs, cmd) for name, cmd in COMMANDS.items()}
        refs = push_images(work, registry, work / "layout")
        with ThrottleProxy(registry.port, args.rtt_ms / 1000, args.mbit * 125_000) as proxy:
            for rep in range(reps):
                for fmt, repo in refs.items():
                    ref = f"{proxy.host}/{repo}"
                    for name, cmd in COMMANDS.items():
                        samples += one_round(work, ref, fmt, name, cmd, files[name], rep)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(samples, args)
    return 0


def one_round(
    work: Path, ref: str, fmt: str, name: str, cmd: list[str], files: list[str], rep: int
) -> list[Sample]:
    out = []
    tag = f"{fmt.replace(':', '-')}-{name}-{rep}"
    mnt = work / f"mnt-{tag}"
    mnt.mkdir()
    full = run_full(work / f"full-{tag}", ref, cmd, mnt)
    image = Store.open(work / f"full-{tag}").resolve(ref)
    total = sum(d.size for d in image.layers)
    out.append(Sample(fmt, name, "full", full, total, total, full))
    first, fetched, done = run_lazy(work / f"lazy-{tag}", ref, files, True)
    out.append(Sample(fmt, name, "lazy", first, fetched, total, done))
    first, fetched, _ = run_lazy(work / f"bare-{tag}", ref, files, False)
    out.append(Sample(fmt, name, "lazy-no-prefetch", first, fetched, total))
    for path in work.glob(f"*-{tag}"):
        shutil.rmtree(path, ignore_errors=True)
    return out


def report(samples: list[Sample], args: argparse.Namespace) -> None:
    print(f"lazy pull, {args.rtt_ms:g} ms RTT, {args.mbit:g} Mbit/s (medians)")
    print(
        f"{'format':<14}{'cmd':<6}{'mode':<18}{'first cmd s':>12}{'fetched %':>11}"
        f"{'complete s':>12}"
    )
    keys = sorted({(s.format, s.command, s.mode) for s in samples})
    for key in keys:
        group = [s for s in samples if (s.format, s.command, s.mode) == key]
        first = statistics.median(s.first_command_s for s in group)
        share = statistics.median(100 * s.fetched_bytes / s.image_bytes for s in group)
        done = [s.completion_s for s in group if s.completion_s is not None]
        done_text = f"{statistics.median(done):12.2f}" if done else f"{'-':>12}"
        print(f"{key[0]:<14}{key[1]:<6}{key[2]:<18}{first:12.2f}{share:11.1f}{done_text}")
    print("lazy first command = the command's file reads through the lazy layer reader")
    stamp = datetime.date.today().isoformat()
    target = args.results / f"{stamp}-{socket.gethostname()}"
    target.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "results"}
    doc = {"args": settings, "samples": [asdict(s) for s in samples]}
    (target / "lazy.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    sys.exit(main())
