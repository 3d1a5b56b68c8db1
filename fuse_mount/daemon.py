"""Start a mount in the background and report back only once it is usable, or why it is not.

``layerfs mount`` forks a daemon that detaches (new session, stdio to ``/dev/null`` or a log
file), mounts and then writes ``ready`` to a pipe the parent waits on; any failure before that
point is written to the same pipe as one line, which the parent raises as an error. The daemon
records its pid in a small file keyed by the mount point so ``layerfs umount`` can wait until
it has really exited (and released the layers) before returning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from fuse_mount import mountinfo
from layerfs import Stack, privilege
from layerfs.errors import ConfigError, LayerfsError, describe_error
from layerfs.options import StackSpec, format_mount_options

if TYPE_CHECKING:
    from fuse_mount.options import MountOptions

log = logging.getLogger(__name__)

READY = b"ready\n"
FUSE_DEVICE = "/dev/fuse"
LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


class MountService(Protocol):
    """Work that lives as long as a mount is served (background completion of a lazily
    pulled image, say): started in the serving process once the mount is ready, stopped
    when it has been unmounted. Neither call may block for long."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class MountRequest:
    """One mount as asked for, its options read once where it was asked for: the stack, the
    FUSE and adapter options, where, how the daemon runs, and what runs along with it."""

    spec: StackSpec
    options: MountOptions
    mountpoint: Path
    foreground: bool = False
    debug: bool = False
    log_file: Path | None = None
    services: tuple[MountService, ...] = ()


class DaemonError(LayerfsError):
    """The mount daemon failed before the mount was ready (its message says why)."""


def check_mountpoint(mountpoint: Path) -> Path:
    """Resolve *mountpoint* and refuse one that is missing, not a directory or already mounted."""
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise ConfigError(f"mount point does not exist: {mountpoint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mount point is not a directory: {mountpoint}")
    resolved = Path(os.path.realpath(mountpoint))
    if mountinfo.find(resolved) is not None:
        raise ConfigError(f"mount point is already in use: {resolved}")
    return resolved


def check_fuse_device() -> None:
    """Refuse early, with a clear message, when FUSE is not available here."""
    if not os.path.exists(FUSE_DEVICE):
        raise ConfigError(f"no {FUSE_DEVICE}: load the fuse module or pass the device in")
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise ConfigError(f"cannot open {FUSE_DEVICE}: permission denied")


def mount(request: MountRequest) -> None:
    """Check and assemble the stack of *request* here, then serve it (:func:`start`).

    Every check runs in the calling process, before anything is forked, so a mistake (no
    FUSE device, a mount point missing or in use, a lower that is not a directory) raises
    :class:`ConfigError` (or another :class:`LayerfsError`) with a one-line message here.
    """
    check_fuse_device()
    ensure_runtime_dir()
    resolved = check_mountpoint(request.mountpoint)
    stack = Stack.from_spec(request.spec)
    log_file = request.log_file.absolute() if request.log_file else None
    start(replace(request, mountpoint=resolved, log_file=log_file), stack)


def start(request: MountRequest, stack: Stack) -> None:
    """Serve *stack*: in this process with ``foreground``, else in a daemon once it is ready.

    Returns (in the caller's process) once the mount is usable. Raises :class:`DaemonError`
    with the daemon's one-line reason if it failed before that.
    """
    if request.foreground:
        _serve(request, stack, ready_fd=None)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the daemon, observed through the pipe
        os.close(read_end)
        os._exit(_daemon_main(request, stack, write_end))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if answer != READY:
        message = answer.decode(errors="replace").strip()
        raise DaemonError(message or "the mount daemon exited before the mount was ready")


class _Readiness:
    """Whether "ready" went to the parent (then its pipe is closed: nothing more goes there)."""

    sent = False


readiness = _Readiness()


def _daemon_main(request: MountRequest, stack: Stack, ready_fd: int) -> int:
    try:
        os.setsid()
        os.chdir("/")
        _redirect_stdio(request.log_file)
        _configure_logging(request.debug, to_stderr=True)
        _serve(request, stack, ready_fd)
        return 0
    except BaseException as exc:
        _report_failure(exc, None if readiness.sent else ready_fd)
        return 1


def _serve(request: MountRequest, stack: Stack, ready_fd: int | None) -> None:
    from fuse_mount.mount import serve  # pyfuse3 is needed only from here on

    if request.foreground:
        _configure_logging(request.debug, to_stderr=request.log_file is None, path=request.log_file)
    pidfile = pidfile_path(request.mountpoint)

    def on_ready() -> None:
        write_pidfile(pidfile)
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)
            readiness.sent = True
        for service in request.services:
            _run_service(service, "start")

    readiness.sent = False
    log.info("serving %s on %s", format_mount_options(request.spec), request.mountpoint)
    try:
        with stack:
            try:
                serve(stack, request.mountpoint, request.options, on_ready=on_ready)
            finally:
                for service in request.services:
                    _run_service(service, "stop")
    finally:
        remove_own_pidfile(pidfile)


def _run_service(service: MountService, call: Literal["start", "stop"]) -> None:
    """Start or stop *service*; one that fails is logged, and the mount goes on without it."""
    try:
        service.start() if call == "start" else service.stop()
    except Exception:
        log.error("cannot %s %r", call, service, exc_info=True)


def _report_failure(exc: BaseException, ready_fd: int | None) -> None:
    """Log the failure and, before "ready" was sent, tell the parent in one line."""
    exc = _innermost(exc)
    if isinstance(exc, (LayerfsError, OSError)):
        message = describe_error(exc)
    else:
        message = f"mount daemon failed: {exc!r}"
        log.error("mount daemon failed\n%s", traceback.format_exc())
    log.error("%s", message)
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, message.encode(errors="replace") + b"\n")


def _innermost(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, as trio raises them."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _redirect_stdio(log_file: Path | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    out = null
    if log_file is not None:
        out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        os.close(fd)


def _configure_logging(debug: bool, *, to_stderr: bool, path: Path | None = None) -> None:
    """Daemon logging goes to fd 2 (the log file or /dev/null); faulthandler writes there too."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        handler = logging.FileHandler(path)
    elif to_stderr:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def runtime_dir() -> Path:
    """Where pid files live: ``/run/layerfs`` for root of the host; for anyone else (an
    unprivileged user, or uid 0 of a user namespace such as rootless podman's) a directory of
    their own, ``layerfs-UID`` in ``$XDG_RUNTIME_DIR`` (else the temp dir), UID being the
    user's uid as the parent namespace sees it, the same inside and outside podman."""
    if privilege.is_host_root():
        return Path("/run/layerfs")
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base:
        import tempfile  # only here: it imports shutil, bz2 and lzma (ms of every mount start)

        base = tempfile.gettempdir()
    return Path(base) / f"layerfs-{privilege.outer_uid()}"


def ensure_runtime_dir() -> Path:
    """Create :func:`runtime_dir` (mode 0700) and check it is this user's own.

    Raises :class:`ConfigError` when it is a symlink, not a directory, owned by someone
    else or writable by others (someone may have planted it in a shared temp dir).
    """
    path = runtime_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the runtime directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"runtime directory {path} is not this user's own directory")
    return path


def pidfile_path(mountpoint: Path) -> Path:
    key = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:32]
    return runtime_dir() / f"mount-{key}.pid"


def write_pidfile(path: Path) -> None:
    """Record ``<pid> <start time>`` so a reused pid is never mistaken for the daemon.

    Raises :class:`DaemonError` naming the pid file when it cannot be written.
    """
    pid = os.getpid()
    tmp = path.with_suffix(f".tmp{pid}")
    try:
        ensure_runtime_dir()
        tmp.write_text(f"{pid} {process_start_time(pid)}\n")
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DaemonError(f"cannot write the pid file: {describe_error(exc)}") from exc


def remove_own_pidfile(path: Path) -> None:
    """Remove *path* only while it names this process.

    A plain ``umount`` returns before the daemon has exited, so the next mount of the same
    mount point may already have written its own pid file when this daemon leaves; removing
    that file would make ``layerfs umount`` stop waiting for the new daemon.
    """
    owner = read_pidfile(path)
    if owner is not None and owner[0] == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_pidfile(path: Path) -> tuple[int, str] | None:
    """``(pid, start time)`` if the file names a process that is still that daemon."""
    try:
        pid_text, start_text = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return (pid, start_text) if process_start_time(pid) == start_text else None


def process_start_time(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat``; empty when the process is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def is_enotconn(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False
