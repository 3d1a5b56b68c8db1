"""Mounting and unmounting each compared system, and finding the FUSE daemons it starts.

A :class:`System` turns a :class:`MountSpec` into a directory to benchmark. Every mount is a
context manager whose exit unmounts (retrying, then lazily) even when the body raised or the
user pressed Ctrl-C, so a run never leaves mounts behind. Long lower lists are passed relative
to the layers' parent directory (kernel mount options are limited to one page), except to
layerfs, which receives absolute paths.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from layerfs.options import format_lowerdir

MOUNT_TIMEOUT = 30.0  # seconds to wait for a FUSE mount to appear
UNMOUNT_RETRIES = 10
RETRY_DELAY = 0.2  # seconds
DAEMON_EXIT_TIMEOUT = 10.0  # seconds for a daemon to leave after its unmount
CMD_TIMEOUT = 120.0  # seconds for any mount helper
REPO = Path(__file__).resolve().parents[1]


class MountError(Exception):
    """A system could not be mounted or unmounted; the message says why."""


@dataclass(frozen=True, slots=True)
class MountSpec:
    """What to mount. ``lowers`` are top-most first; ``flat`` is the plain-directory equivalent."""

    lowers: tuple[Path, ...]
    flat: Path
    upper: Path | None = None
    work: Path | None = None


@dataclass(frozen=True, slots=True)
class Mounted:
    """A mounted view: where to run the workload and, for FUSE, the daemon's pid if found."""

    path: Path
    daemon_pid: int | None = None


class System(ABC):
    """Base of the compared systems; subclasses mount and unmount."""

    name = ""
    is_fuse = False

    def unavailable_reason(self) -> str | None:
        """Why this system cannot run here, or None when it can."""
        return None

    @abstractmethod
    def mount(self, spec: MountSpec, target: Path) -> AbstractContextManager[Mounted]:
        """Mount *spec* on *target* (a fresh empty directory) for the duration of the block."""


class Plain(System):
    """The merged tree as an ordinary directory: the floor every union is measured against."""

    name = "plain"

    @contextmanager
    def mount(self, spec: MountSpec, target: Path) -> Iterator[Mounted]:
        yield Mounted(spec.flat)


class Kernel(System):
    """Kernel overlayfs, ``mount -t overlay``, with the module's default options."""

    name = "kernel"

    def unavailable_reason(self) -> str | None:
        if os.geteuid() != 0:
            return "mount -t overlay needs root"
        try:
            if "overlay" not in Path("/proc/filesystems").read_text():
                return "the kernel has no overlay filesystem"
        except OSError as exc:
            return f"cannot read /proc/filesystems: {exc}"
        return None

    @contextmanager
    def mount(self, spec: MountSpec, target: Path) -> Iterator[Mounted]:
        options, cwd = overlay_options(spec)
        try:
            _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], cwd)
            yield Mounted(target)
        finally:
            if os.path.ismount(target):
                unmount(target, ["umount"])


class FuseOverlayfs(System):
    """fuse-overlayfs, started the usual way (it daemonises once the mount is up)."""

    name = "fuse-overlayfs"
    is_fuse = True

    def unavailable_reason(self) -> str | None:
        return _fuse_reason() or _missing("fuse-overlayfs")

    @contextmanager
    def mount(self, spec: MountSpec, target: Path) -> Iterator[Mounted]:
        options, cwd = overlay_options(spec)
        start = ["fuse-overlayfs", "-o", options, str(target)]
        with _fuse_mounted(start, cwd, target, ["fusermount3", "-u"]) as mounted:
            yield mounted


class Layerfs(System):
    """layerfs's FUSE mount through its CLI, from the interpreter running the benchmarks,
    with one session backend (``-o backend=``): ``layerfs`` is the native one."""

    name = "layerfs"
    is_fuse = True

    def __init__(self, backend: str = "native") -> None:
        self.backend = backend
        if backend != "native":
            self.name = f"layerfs-{backend}"

    def unavailable_reason(self) -> str | None:
        reason = _fuse_reason()
        if reason:
            return reason
        proc = subprocess.run(
            [*layerfs_command(), "mount", "--help"],
            env=layerfs_env(),
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 or "--lower" not in proc.stdout:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            return f"`layerfs mount` is not usable yet: {last}"
        return None

    @contextmanager
    def mount(self, spec: MountSpec, target: Path) -> Iterator[Mounted]:
        argv = [*layerfs_command(), "mount", "-o", f"backend={self.backend}"]
        argv += ["--lower", format_lowerdir(spec.lowers)]
        if spec.upper is not None and spec.work is not None:
            argv += ["--upper", str(spec.upper), "--work", str(spec.work)]
        umount = [*layerfs_command(), "umount"]
        with _fuse_mounted([*argv, str(target)], None, target, umount, layerfs_env()) as mounted:
            yield mounted


ALL_SYSTEMS: tuple[System, ...] = (
    Plain(),
    Kernel(),
    FuseOverlayfs(),
    Layerfs(),
    Layerfs("pyfuse3"),
)


def layerfs_command() -> list[str]:
    """The layerfs CLI of this checkout, run by the interpreter running the benchmarks.

    ``-m layerfs.cli.main`` would only import the module (it has no ``__main__`` block), and
    the installed script may resolve another copy of the package, so the entry point is
    called through ``-c`` with the checkout first on ``PYTHONPATH`` (see :func:`layerfs_env`).
    """
    return [sys.executable, "-c", "from layerfs.cli.main import main; main()"]


def layerfs_env() -> dict[str, str]:
    """The environment of layerfs commands: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def overlay_options(spec: MountSpec) -> tuple[str, Path | None]:
    """``lowerdir=...`` options and the directory to run the mount from.

    When every lower shares one parent, the lowers are named relative to it and the mount runs
    there: 128 absolute paths would not fit in the one page the kernel accepts for options.
    """
    parents = {p.parent for p in spec.lowers}
    cwd = parents.pop() if len(parents) == 1 else None
    names = [p.name if cwd else str(p) for p in spec.lowers]
    options = "lowerdir=" + ":".join(names)
    if spec.upper is not None and spec.work is not None:
        options += f",upperdir={spec.upper},workdir={spec.work}"
    return options, cwd


@contextmanager
def _fuse_mounted(
    start: list[str],
    cwd: Path | None,
    target: Path,
    umount: list[str],
    env: dict[str, str] | None = None,
) -> Iterator[Mounted]:
    """Run *start*, wait for the mount, find its daemon; unmount and reap it at the end.

    The unmount sits in ``finally`` around the start command too: a helper that fails after
    the mount appeared must not leave it behind.
    """
    pid: int | None = None
    try:
        _run(start, cwd, env)
        _wait_mounted(target)
        pid = find_daemon(target)
        yield Mounted(target, pid)
    finally:
        if os.path.ismount(target):
            if pid is None:
                pid = find_daemon(target)
            unmount(target, umount, env)
        if pid is not None:
            _reap(pid)


def unmount(target: Path, command: list[str], env: dict[str, str] | None = None) -> None:
    """Unmount *target*, retrying while busy, and detach it lazily as the last resort."""
    last = ""
    for _ in range(UNMOUNT_RETRIES):
        proc = subprocess.run(
            [*command, str(target)],
            env=env,
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
            check=False,
        )
        if not os.path.ismount(target):
            return
        last = proc.stderr.strip()
        time.sleep(RETRY_DELAY)
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
    if os.path.ismount(target):
        raise MountError(f"cannot unmount {target}: {last}")
    print(f"warning: {target} was busy and detached lazily ({last})", file=sys.stderr)


def find_daemon(target: Path) -> int | None:
    """The pid of the process serving the FUSE mount on *target*.

    It is the process whose command line names *target* and that holds ``/dev/fuse`` open; the
    mount point is unique to this run, so no other process can match.
    """
    needle = str(target)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(os.fsdecode(a) == needle for a in argv):
                continue
            fds = list((entry / "fd").iterdir())
            if any(os.readlink(fd) == "/dev/fuse" for fd in fds):
                return int(entry.name)
        except OSError:
            continue
    return None


def peak_rss(pid: int) -> int | None:
    """``VmHWM`` of *pid* in bytes: the highest resident set size it has had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reap(pid: int) -> None:
    """Wait for the daemon we started to exit after its unmount; end it by pid if it lingers."""
    deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.05)
    print(f"warning: daemon {pid} still running after unmount, terminating it", file=sys.stderr)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _wait_mounted(target: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(target):
        if time.monotonic() > deadline:
            raise MountError(f"{target} did not become a mount point within {MOUNT_TIMEOUT:.0f} s")
        time.sleep(0.01)


def _run(argv: list[str], cwd: Path | None, env: dict[str, str] | None = None) -> None:
    """Run a mount helper. Output goes to a file, not a pipe: a daemon that keeps the
    inherited descriptors open would otherwise make us wait for it forever."""
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                timeout=CMD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            what = " ".join(_describe(argv))
            raise MountError(f"{what} did not return within {CMD_TIMEOUT:.0f} s") from exc
        if proc.returncode != 0:
            out.seek(0)
            lines = out.read().strip().splitlines()
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise MountError(f"{' '.join(_describe(argv))} failed: {detail}")


def _describe(argv: list[str]) -> list[str]:
    """The command and subcommand of *argv*, naming the layerfs CLI ``layerfs``."""
    if argv[:2] == layerfs_command()[:2]:
        return ["layerfs", *argv[len(layerfs_command()) :][:1]]
    return [Path(argv[0]).name]


def _fuse_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return _missing("fusermount3")


def _missing(tool: str) -> str | None:
    return None if shutil.which(tool) else f"{tool} is not installed"


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below *path*, deepest first (from ``/proc/self/mountinfo``)."""
    base = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == base or point.startswith(base + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def detach_under(path: Path) -> None:
    """Unmount whatever is still mounted below *path*, so removing the tree cannot reach
    into a mounted filesystem. Only a failure elsewhere can leave such a mount behind."""
    for point in mounts_under(path):
        print(f"warning: {point} still mounted; unmounting it", file=sys.stderr)
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
