"""Lazy pull against full pull + mount, over a throttled loopback link.

``python -m benchmarks.lazy [--quick] [--rtt-ms 20] [--mbit 100] [--size-mb 150]``

Builds a Debian-sized single-layer image from this host's own files (``/usr/bin``,
``/usr/lib``, perl's library and what ``sh`` and ``perl`` load), pushes it to a private
``docker-registry`` on 127.0.0.1 as zstd:chunked (skopeo) and as eStargz (ctr-remote, with a
private containerd), and reaches the registry through :class:`ThrottleProxy` (one shared
link: a round-trip delay and a rate). For each format and command (``sh -c true``,
``perl -e 1``) it measures, in the same run and alternating:

* **full**: ``layerfs pull``, ``layerfs mount`` of the image (which unpacks its layer), the
  command in it with ``chroot``: seconds from the start of the pull to the end of the
  command, and the pull alone;
* **lazy**: ``layerfs pull --lazy``, ``layerfs mount`` of the image (its layer read through
  its TOC) and the command in it with ``chroot``: seconds to the end of the command, bytes
  the registry sent by then, and the seconds until background completion (run by the mount
  daemon) has fetched and verified every layer, and until it has unpacked them;
* **lazy-no-prefetch**: the same with ``--no-prefetch``.

Then, once: a lazy mount with ``--fetch-timeout``, the registry stopped, and reads of files
that are not local, each timed. Results: ``benchmarks/results/<date>-<host>/lazy.json`` and
``lazy-report.txt``, with each target's verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
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
from typing import Any

from benchmarks.meta import collect
from benchmarks.throttle import ThrottleProxy
from layerfs.store import Store

REPO = Path(__file__).resolve().parent.parent
LAYERFS = str(Path(sys.executable).parent / "layerfs")
RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = {"sh": ["sh", "-c", "true"], "perl": ["perl", "-e", "1"]}
SOURCES = ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu", "/usr/share/perl", "/etc")
COMPLETION_LIMIT = 600.0  # seconds background completion may take before the run fails
POLL = 0.05  # seconds between looks at the store while completion runs
FAULT_TIMEOUT = 5.0  # seconds: --fetch-timeout of the fault round
FAULT_READS = 5  # files read once the registry is gone
TARGETS = {"first": 5.0, "no_prefetch_share": 15.0, "completion": 1.2}


@dataclass
class Sample:
    """One run. Seconds count from the start of the pull; bytes are what the registry sent
    through the proxy from then to the end of the first command."""

    format: str
    command: str
    mode: str  # full, lazy, lazy-no-prefetch
    first_command_s: float
    fetched_bytes: int
    image_bytes: int  # compressed layers
    pull_s: float | None = None  # full: the pull alone
    completion_s: float | None = None  # lazy: every layer fetched and verified
    unpacked_s: float | None = None  # lazy: ... and unpacked


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


def run_full(root: Path, ref: str, command: list[str], mnt: Path, proxy: ThrottleProxy) -> Sample:
    began, before = time.monotonic(), proxy.bytes_down
    sh(LAYERFS, "pull", "--insecure", "-q", "--root", root, ref)
    pulled = time.monotonic() - began
    sh(LAYERFS, "mount", "--root", root, ref, mnt)
    try:
        first = run_in(mnt, command) - began
    finally:
        sh(LAYERFS, "umount", mnt)
    fetched = proxy.bytes_down - before
    return Sample("", "", "full", first, fetched, image_bytes(root, ref), pull_s=pulled)


def run_lazy(
    root: Path, ref: str, command: list[str], mnt: Path, proxy: ThrottleProxy, prefetch: bool
) -> Sample:
    began, before = time.monotonic(), proxy.bytes_down
    extra = [] if prefetch else ["--no-prefetch"]
    sh(LAYERFS, "pull", "--lazy", "--insecure", "-q", "--root", root, *extra, ref)
    sh(LAYERFS, "mount", "--root", root, ref, mnt)
    try:
        first = run_in(mnt, command) - began
        fetched = proxy.bytes_down - before
        mode = "lazy" if prefetch else "lazy-no-prefetch"
        sample = Sample("", "", mode, first, fetched, image_bytes(root, ref))
        if prefetch:
            sample.completion_s, sample.unpacked_s = wait_completion(root, ref, began)
    finally:
        sh(LAYERFS, "umount", mnt)
    return sample


def run_in(mnt: Path, command: list[str]) -> float:
    """Run *command* in the mounted image with chroot; the time it ended."""
    sh("mount", "--bind", "/dev/null", mnt / "dev" / "null")  # FUSE mounts are nodev
    try:
        sh("chroot", mnt, *command)
        return time.monotonic()
    finally:
        sh("umount", mnt / "dev" / "null")


def image_bytes(root: Path, ref: str) -> int:
    """The compressed size of the image's layers."""
    return sum(d.size for d in Store.open(root).resolve(ref).layers)


def wait_completion(root: Path, ref: str, began: float) -> tuple[float, float]:
    """Seconds from *began* until every layer is fetched and verified, and unpacked."""
    store = Store.open(root)
    image = store.resolve(ref)
    deadline = time.monotonic() + COMPLETION_LIMIT
    verified: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if verified is None and all(store.has_blob(d.digest) for d in image.layers):
            verified = now - began
        if verified is not None and all(store.layout.layer_dir(d).is_dir() for d in image.diff_ids):
            return verified, now - began
        time.sleep(POLL)
    raise RuntimeError(f"background completion of {ref} did not end in {COMPLETION_LIMIT}s")


def run_faults(work: Path, ref: str, registry: Registry, rootfs: Path) -> dict[str, object]:
    """A lazy mount with --fetch-timeout, then the registry stopped: each read of a file that
    is not local, timed (the registry stays stopped: run this last)."""
    root, mnt = work / "faults", work / "mnt-faults"
    mnt.mkdir()
    sh(LAYERFS, "pull", "--lazy", "--no-prefetch", "--insecure", "-q", "--root", root, ref)
    timeout = str(FAULT_TIMEOUT)
    sh(LAYERFS, "mount", "--root", root, "--fetch-timeout", timeout, ref, mnt)
    files = sorted(p for p in (rootfs / "usr/bin").iterdir() if p.is_file() and not p.is_symlink())
    paths = [str(p.relative_to(rootfs)) for p in files[:FAULT_READS]]
    reads: list[dict[str, object]] = []
    try:
        registry.stop()
        for path in paths:
            began = time.monotonic()
            try:
                (mnt / path).read_bytes()
                outcome = "read"
            except OSError as exc:
                outcome = errno.errorcode.get(exc.errno or 0, str(exc))
            reads.append({"path": path, "seconds": time.monotonic() - began, "outcome": outcome})
    finally:
        sh(LAYERFS, "umount", mnt)
    return {"fetch_timeout_s": FAULT_TIMEOUT, "reads": reads}


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
    meta = collect({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    work = Path(tempfile.mkdtemp(prefix="layerfs-bench-lazy-"))
    samples: list[Sample] = []
    faults: dict[str, object] = {}
    registry = Registry(work / "registry")
    try:
        rootfs = work / "bundle" / "rootfs"
        sh("umoci", "init", "--layout", work / "layout")
        sh("umoci", "new", "--image", f"{work / 'layout'}:img")
        sh("umoci", "unpack", "--image", f"{work / 'layout'}:img", work / "bundle")
        build_rootfs(rootfs, size << 20)
        sh("umoci", "repack", "--image", f"{work / 'layout'}:img", work / "bundle")
        refs = push_images(work, registry, work / "layout")
        with ThrottleProxy(registry.port, args.rtt_ms / 1000, args.mbit * 125_000) as proxy:
            for rep in range(reps):
                for fmt, repo in refs.items():
                    ref = f"{proxy.host}/{repo}"
                    for name, cmd in COMMANDS.items():
                        samples += one_round(work, ref, fmt, name, cmd, rep, proxy)
            faults = run_faults(work, f"{proxy.host}/{refs['zstd:chunked']}", registry, rootfs)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(samples, faults, args, meta)
    return 0


MODES = ("full", "lazy", "lazy-no-prefetch")


def one_round(
    work: Path, ref: str, fmt: str, name: str, cmd: list[str], rep: int, proxy: ThrottleProxy
) -> list[Sample]:
    """The three modes of one format and command, each in a fresh store; the order of the
    modes turns with *rep*, so none always runs first."""
    out = []
    tag = f"{fmt.replace(':', '-')}-{name}-{rep}"
    mnt = work / f"mnt-{tag}"
    mnt.mkdir()
    for mode in MODES[rep % 3 :] + MODES[: rep % 3]:
        root = work / f"{mode}-{tag}"
        if mode == "full":
            sample = run_full(root, ref, cmd, mnt, proxy)
        else:
            sample = run_lazy(root, ref, cmd, mnt, proxy, prefetch=mode == "lazy")
        sample.format, sample.command = fmt, name
        out.append(sample)
        shutil.rmtree(root, ignore_errors=True)
    return sorted(out, key=lambda s: MODES.index(s.mode))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _cell(value: float | None, width: int = 10) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def report(
    samples: list[Sample],
    faults: dict[str, object],
    args: argparse.Namespace,
    meta: dict[str, Any],
) -> None:
    """Print the medians and each target's verdict; write lazy.json and lazy-report.txt."""
    lines = [
        f"lazy pull, {args.rtt_ms:g} ms RTT, {args.mbit:g} Mbit/s shared link "
        f"(medians of {1 if args.quick else args.reps}; seconds from the start of the pull)",
        f"{'format':<14}{'cmd':<6}{'mode':<18}{'first cmd':>10}{'fetched %':>10}"
        f"{'pull':>10}{'verified':>10}{'unpacked':>10}",
    ]
    medians: dict[tuple[str, str, str], dict[str, float | None]] = {}
    for key in sorted({(s.format, s.command, s.mode) for s in samples}):
        group = [s for s in samples if (s.format, s.command, s.mode) == key]
        row = {
            "first": _median([s.first_command_s for s in group]),
            "share": _median([100 * s.fetched_bytes / s.image_bytes for s in group]),
            "pull": _median([s.pull_s for s in group]),
            "verified": _median([s.completion_s for s in group]),
            "unpacked": _median([s.unpacked_s for s in group]),
        }
        medians[key] = row
        cells = "".join(_cell(row[k]) for k in ("first", "share", "pull", "verified", "unpacked"))
        lines.append(f"{key[0]:<14}{key[1]:<6}{key[2]:<18}{cells}")
    lines += ["", "targets:", *verdicts(medians, faults)]
    text = "\n".join(lines)
    print(text)
    stamp = datetime.date.today().isoformat()
    target = args.results / f"{stamp}-{socket.gethostname()}"
    target.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "results"}
    doc = {
        "meta": meta,
        "args": settings,
        "samples": [asdict(s) for s in samples],
        "faults": faults,
    }
    (target / "lazy.json").write_text(json.dumps(doc, indent=1))
    (target / "lazy-report.txt").write_text(text + "\n")


def verdicts(
    medians: dict[tuple[str, str, str], dict[str, float | None]], faults: dict[str, object]
) -> list[str]:
    """One line per target and format/command: met, or missed by how much."""
    out = []
    for fmt, cmd in sorted({(k[0], k[1]) for k in medians}):
        full = medians.get((fmt, cmd, "full"), {})
        lazy = medians.get((fmt, cmd, "lazy"), {})
        bare = medians.get((fmt, cmd, "lazy-no-prefetch"), {})
        what = f"  {fmt} {cmd}:"
        full_first, pull = full.get("first"), full.get("pull")
        for label, row in (("", lazy), (" no prefetch", bare)):
            first = row.get("first")
            if full_first and first:
                ratio = full_first / first
                out.append(
                    f"{what} first command{label} {ratio:.1f}x sooner "
                    f"({_verdict(ratio >= TARGETS['first'])} >= {TARGETS['first']:g}x)"
                )
        share = bare.get("share")
        if share is not None:
            limit = TARGETS["no_prefetch_share"]
            out.append(
                f"{what} {share:.1f}% fetched by the end of the command without prefetch "
                f"({_verdict(share <= limit)} <= {limit:g}%)"
            )
        verified = lazy.get("verified")
        if verified and pull:
            ratio = verified / pull
            out.append(
                f"{what} background completion {ratio:.3f}x the full pull "
                f"({_verdict(ratio <= TARGETS['completion'])} <= {TARGETS['completion']:g}x)"
            )
    reads = faults.get("reads")
    if isinstance(reads, list) and reads:
        longest = max(float(r["seconds"]) for r in reads)
        limit = float(str(faults["fetch_timeout_s"]))
        outcomes = sorted({str(r["outcome"]) for r in reads})
        out.append(
            f"  registry gone: {len(reads)} reads ended ({', '.join(outcomes)}) in at most "
            f"{longest:.2f}s with --fetch-timeout {limit:g} ({_verdict(longest <= limit)})"
        )
    return out


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
