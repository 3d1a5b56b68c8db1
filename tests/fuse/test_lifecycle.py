"""Mount lifecycle through the CLI: ready on return, errors as one line, signals, helpers."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuse_mount import daemon, mountinfo
from layerfs.errors import ConfigError
from tests.fuse.conftest import (
    CLI,
    Mounter,
    Stackdirs,
    backend_args,
    force_unmount,
    run_cli,
    write_tree,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root, pytest.mark.timeout(90)]

HELPER = Path("/sbin/mount.fuse.layerfs")
WAIT = 20.0  # seconds for a mount to appear or go away


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def daemon_pid(mnt: Path) -> int:
    owner = daemon.read_pidfile(daemon.pidfile_path(mnt))
    assert owner is not None, "the daemon wrote no pid file"
    return owner[0]


def test_mount_is_ready_on_return_and_umount_waits(mounter: Mounter) -> None:
    dirs = mounter.layers({"hello.txt": "hi\n", "d": None})
    mnt = mounter.mount(dirs)
    assert (mnt / "hello.txt").read_text() == "hi\n"
    entry = mountinfo.find(mnt)
    assert entry is not None
    assert (entry.fstype, entry.source) == ("fuse.layerfs", "layerfs")
    pid = daemon_pid(mnt)
    mounter.unmount(mnt)
    assert mountinfo.find(mnt) is None
    assert daemon.process_start_time(pid) == ""
    assert not daemon.pidfile_path(mnt).exists()


def test_without_upper_the_mount_is_read_only(mounter: Mounter) -> None:
    dirs = mounter.layers({"f": "x"}, upper=False)
    mnt = mounter.mount(dirs)
    for attempt in (
        lambda: (mnt / "new").write_text("y"),
        lambda: (mnt / "f").write_text("y"),
        lambda: os.mkdir(mnt / "dir"),
        lambda: os.unlink(mnt / "f"),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert (mnt / "f").read_text() == "x"


def test_ro_option_with_upper(mounter: Mounter) -> None:
    dirs = mounter.layers({"f": "x"})
    mnt = mounter.mount(dirs, "-o", "ro")
    with pytest.raises(OSError) as info:
        (mnt / "f").write_text("y")
    assert info.value.errno == errno.EROFS
    assert dirs.upper is not None and not any(dirs.upper.iterdir())


def test_overlay_option_syntax_and_generic_options(mounter: Mounter) -> None:
    dirs = mounter.layers({"a": "top"}, {"a": "bottom", "b": "low"})
    assert dirs.mnt is not None
    lowers = ":".join(str(p) for p in dirs.lowers)
    opts = f"lowerdir={lowers},upperdir={dirs.upper},workdir={dirs.work},rw,noatime,dev,suid"
    mounter.mounted.append(dirs.mnt)
    run_cli("mount", "-o", opts, "-o", "fsname=myimage,nofail,x-test.x=1", str(dirs.mnt))
    assert sorted(os.listdir(dirs.mnt)) == ["a", "b"]
    assert (dirs.mnt / "a").read_text() == "top"
    entry = mountinfo.find(dirs.mnt)
    assert entry is not None and entry.source == "myimage"


def _one_line_error(*args: str) -> str:
    done = run_cli("mount", *args, check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_config_errors_are_one_line(mounter: Mounter, tmp_path: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    assert dirs.mnt is not None and dirs.upper is not None and dirs.work is not None
    mnt, low = str(dirs.mnt), str(dirs.lowers[0])
    missing = str(tmp_path / "missing")
    assert "lower" in _one_line_error("--lower", missing, mnt)
    assert "work" in _one_line_error("--lower", low, "--work", str(dirs.work), mnt)
    inside = write_tree(dirs.upper / "w", {})
    assert "contain" in _one_line_error(
        "--lower", low, "--upper", str(dirs.upper), "--work", str(inside), mnt
    )
    assert "mount point" in _one_line_error("--lower", low, missing)
    assert "unknown" in _one_line_error("--lower", low, "-o", "bogus_option", mnt)
    assert mountinfo.find(dirs.mnt) is None


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_upper_and_work_on_different_filesystems(mounter: Mounter, tmp_path: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    assert dirs.mnt is not None and dirs.upper is not None
    with tmpfs(tmp_path / "other") as other:
        work = write_tree(other / "work", {})
        message = _one_line_error(
            "--lower", str(dirs.lowers[0]), "--upper", str(dirs.upper), "--work", str(work),
            str(dirs.mnt),
        )  # fmt: skip
    assert "different filesystems" in message


def test_mount_point_in_use(mounter: Mounter) -> None:
    dirs = mounter.layers({"f": "x"})
    mnt = mounter.mount(dirs)
    assert "already in use" in _one_line_error(*dirs.mount_args(), str(mnt))
    assert (mnt / "f").read_text() == "x"


def test_no_fuse_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(daemon, "FUSE_DEVICE", str(tmp_path / "fuse"))
    with pytest.raises(ConfigError, match=r"no .*fuse"):
        daemon.check_fuse_device()


def test_sigterm_unmounts_cleanly(mounter: Mounter) -> None:
    dirs = mounter.layers({"f": "x"})
    mnt = mounter.mount(dirs)
    (mnt / "new").write_text("kept")
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: mountinfo.find(mnt) is None, "the unmount after SIGTERM")
    wait_until(lambda: daemon.process_start_time(pid) == "", "the daemon to exit")
    assert dirs.upper is not None and (dirs.upper / "new").read_text() == "kept"


def test_sigterm_under_a_stream_of_requests(mounter: Mounter) -> None:
    """A signal that arrives while the busy-polling loop serves request after request still
    unmounts cleanly (the loop yields to trio's signal task often enough)."""
    dirs = mounter.layers({f"d/f{i}": str(i) for i in range(50)})
    mnt = mounter.mount(dirs)
    pid = daemon_pid(mnt)
    stop = threading.Event()
    errors: list[BaseException] = []

    def stat_forever() -> None:
        while not stop.is_set():
            try:
                for i in range(50):
                    os.lstat(mnt / "d" / f"f{i}")
                    (mnt / "d" / f"f{i}").read_bytes()
            except OSError:
                return  # the mount went away under us: expected once SIGTERM lands
            except BaseException as exc:
                errors.append(exc)
                return

    worker = threading.Thread(target=stat_forever)
    worker.start()
    try:
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: mountinfo.find(mnt) is None, "the unmount after SIGTERM")
        wait_until(lambda: daemon.process_start_time(pid) == "", "the daemon to exit")
    finally:
        stop.set()
        worker.join(timeout=WAIT)
    assert not errors


def test_killed_daemon_is_cleaned_by_umount(mounter: Mounter) -> None:
    dirs = mounter.layers({"f": "x"})
    mnt = mounter.mount(dirs)
    os.kill(daemon_pid(mnt), signal.SIGKILL)
    wait_until(lambda: daemon.is_enotconn(mnt), "the mount to report ENOTCONN")
    mounter.unmount(mnt)
    assert mountinfo.find(mnt) is None
    assert os.listdir(mnt) == []


def test_foreground_and_sigint(mounter: Mounter, tmp_path: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    assert dirs.mnt is not None
    mnt = dirs.mnt
    log = tmp_path / "fg.log"
    args = ("mount", "--foreground", "--debug", "--log", str(log), *dirs.mount_args(), str(mnt))
    proc = subprocess.Popen([*CLI, *backend_args(args)], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: mountinfo.find(mnt) is not None, "the foreground mount")
        assert (mnt / "f").read_text() == "x"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT) == 0, proc.stderr.read() if proc.stderr else ""
        assert mountinfo.find(mnt) is None
        assert "lookup" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mnt)


@pytest.fixture
def mount_helper() -> Iterator[Path]:
    """Install ``/sbin/mount.fuse.layerfs`` for mount(8), removing it only if we created it."""
    script = shutil.which("mount.fuse.layerfs") or str(Path(CLI[0]).parent / "mount.fuse.layerfs")
    if not Path(script).exists():
        pytest.skip("the mount.fuse.layerfs console script is not installed")
    created = not HELPER.exists() and not HELPER.is_symlink()
    if created:
        HELPER.symlink_to(script)
    try:
        yield HELPER
    finally:
        if created:
            HELPER.unlink()


def _check_helper_mount(mounter: Mounter, dirs: Stackdirs, command: list[str]) -> None:
    assert dirs.mnt is not None
    mounter.mounted.append(dirs.mnt)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    entry = mountinfo.find(dirs.mnt)
    assert entry is not None and entry.fstype == "fuse.layerfs"
    assert entry.source == "myimage"
    (dirs.mnt / "new").write_text("via helper")
    assert (dirs.mnt / "f").read_text() == "x"
    mounter.unmount(dirs.mnt)
    assert dirs.upper is not None and (dirs.upper / "new").read_text() == "via helper"


def _overlay_options(dirs: Stackdirs) -> str:
    """The stack as overlay options, with the running test's backend."""
    lowers = ":".join(str(p) for p in dirs.lowers)
    backend = backend_args(("mount",))[1:]
    extra = f",{backend[1]}" if backend else ""
    return f"lowerdir={lowers},upperdir={dirs.upper},workdir={dirs.work}{extra}"


def test_mount_t_fuse_layerfs(mounter: Mounter, mount_helper: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    command = ["mount", "-t", "fuse.layerfs", "myimage", str(dirs.mnt)]
    _check_helper_mount(mounter, dirs, [*command, "-o", _overlay_options(dirs)])


def test_fstab_line(mounter: Mounter, mount_helper: Path, tmp_path: Path) -> None:
    dirs = mounter.layers({"f": "x"})
    fstab = tmp_path / "fstab"
    line = f"myimage {dirs.mnt} fuse.layerfs {_overlay_options(dirs)},noauto,nofail,noatime 0 0"
    fstab.write_text(line + "\n")
    _check_helper_mount(mounter, dirs, ["mount", "-T", str(fstab), str(dirs.mnt)])


@pytest.mark.parametrize("busy_poll", ["200", "0"])
def test_request_loop_modes(mounter: Mounter, tmp_path: Path, busy_poll: str) -> None:
    """Both request loops serve a walk and a write correctly; only the busy-poll one reads
    requests without sleeping (its unmount line in the log says how many)."""
    files: dict[str, str | bytes | None] = {
        f"d{i}/f{j}": f"{i}-{j}" for i in range(8) for j in range(40)
    }
    dirs = mounter.layers(files)
    log = tmp_path / f"loop-{busy_poll}.log"
    mnt = mounter.mount(dirs, "-o", f"busy_poll={busy_poll}", "--log", str(log))
    seen = {
        str(path.relative_to(mnt)): path.read_text() for path in mnt.rglob("*") if path.is_file()
    }
    (mnt / "d0" / "new").write_text("written")
    mounter.unmount(mnt)
    assert seen == files
    assert (dirs.upper / "d0" / "new").read_text() == "written"  # type: ignore[operator]
    summary = [line for line in log.read_text().splitlines() if "busy-poll:" in line]
    if busy_poll == "0":
        assert summary == []
    else:
        caught = int(summary[-1].split("busy-poll: ")[1].split()[0])
        assert caught > 0, summary


CYCLES = 30


def test_mounting_again_right_after_a_plain_umount(mounter: Mounter) -> None:
    """Mount, plain ``umount`` (which returns before the daemon has exited), mount the same
    directories again at once, many times: every mount starts, and its pid file names its
    own daemon (the previous daemon, leaving, must not remove the new one's pid file)."""
    dirs = mounter.layers({"d/f": "x"})
    assert dirs.mnt is not None
    pidfile = daemon.pidfile_path(dirs.mnt)
    for _ in range(CYCLES):
        mnt = mounter.mount(dirs)
        assert (mnt / "d" / "f").read_text() == "x"
        owner = daemon.read_pidfile(pidfile)
        subprocess.run(["umount", str(mnt)], check=True)
        mounter.mounted.remove(mnt)
        assert owner is not None, "the new daemon's pid file is gone"
    wait_until(lambda: daemon.read_pidfile(pidfile) is None, "the last daemon to exit")


def test_a_start_up_failure_is_one_line_naming_the_path(tmp_path: Path) -> None:
    """An error raised inside trio's nursery arrives as an exception group whose repr hides
    the path; the parent gets one line with the reason and the path."""
    read_end, write_end = os.pipe()
    missing = tmp_path / "gone" / "mount.pid"
    error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(missing))
    daemon._report_failure(BaseExceptionGroup("Exceptions from Trio nursery", [error]), write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        lines = pipe.read().decode().splitlines()
    assert lines == [f"No such file or directory: {missing}"]
