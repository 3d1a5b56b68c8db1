"""An unprivileged user made for the test run, with layerfs installed where it can run it.

:func:`unprivileged_user` creates a user (``useradd``, which gives it ``/etc/subuid`` and
``/etc/subgid`` ranges, added by hand where it does not), a world-traversable base directory
under the temp dir, and a Python environment the user can run: a fresh virtualenv of a Python
of the same version the user can execute, whose ``.pth`` file points at read-only bind mounts of
this checkout and of the test virtualenv's site-packages (the checkout may sit below a
directory only root can enter). ``BASE/bin/layerfs`` and ``BASE/bin/mount.fuse.layerfs`` run
this checkout's code. ``/dev/fuse`` is opened to everyone for the run (stock Debian has it
0666) and put back afterwards. At the end every process of the user is killed (by pid), the bind
mounts are undone, the user is deleted and the base directory removed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fuse_mount import mountinfo

CHECKOUT = Path(__file__).resolve().parents[2]
FUSE_DEVICE = Path("/dev/fuse")
SUB_IDS = 65536  # per user, as useradd gives by default
SUB_ID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
RUN_TIMEOUT = 600  # seconds for one command run as the user
USERNS = ("unshare", "--map-root-user", "--map-auto", "--mount")


@dataclass
class User:
    """The test user and where its layerfs lives."""

    name: str
    uid: int
    gid: int
    base: Path
    python: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def layerfs(self) -> Path:
        return self.base / "bin" / "layerfs"

    @property
    def src(self) -> Path:
        """This checkout, as the user reaches it."""
        return self.base / "src"

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"])

    def path(self, name: str) -> Path:
        """A fresh directory *name* in the base directory, owned by the user."""
        target = self.base / name
        target.mkdir()
        os.chown(target, self.uid, self.gid)
        return target

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        userns: bool = False,
        check: bool = True,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* as the user (inside ``unshare -r --map-auto -m`` with *userns*: uid 0 of
        a user namespace that maps the user's subordinate ids, as rootless podman's)."""
        command = [str(a) for a in argv]
        if userns:
            command = [*USERNS, *command]
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        # the user changes directory itself: root may not enter the user's FUSE mounts
        done = subprocess.run(
            [*drop, "env", "--chdir", str(cwd or self.base), *command],
            capture_output=True,
            text=True,
            cwd="/",
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} as {self.name} exited {done.returncode}:\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done


@contextlib.contextmanager
def unprivileged_user() -> Iterator[User]:
    """Everything above, undone in ``finally`` blocks even when a step fails."""
    base = Path(tempfile.mkdtemp(prefix="lfs-user-"))  # short: see test_podman.py
    base.chmod(0o755)
    name = f"lfs{secrets.token_hex(4)}"
    mounts: list[Path] = []
    try:
        with _user(name, base / "home") as (uid, gid), _fuse_device_for_everyone():
            try:
                python = _python_env(base, uid, gid, mounts)
                yield User(name, uid, gid, base, python, _user_env(base, uid, gid))
            finally:
                kill_processes_of(uid)
                for target in reversed(mounts):
                    subprocess.run(["umount", "-l", str(target)], check=False)
    finally:
        _remove_tree(base)


@contextlib.contextmanager
def _user(name: str, home: Path) -> Iterator[tuple[int, int]]:
    created = [p for p in SUB_ID_FILES if not p.exists()]
    for path in created:  # usermod adds ranges only to existing files
        path.touch(mode=0o644)
    try:
        subprocess.run(
            ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", "-U", name],
            check=True,
            capture_output=True,
        )
        try:
            entry = pwd.getpwnam(name)
            _ensure_sub_ids(name)
            yield entry.pw_uid, entry.pw_gid
        finally:
            kill_processes_of(pwd.getpwnam(name).pw_uid)
            # userdel also takes the user's lines out of /etc/subuid and /etc/subgid
            subprocess.run(["userdel", "--force", name], check=False, capture_output=True)
    finally:
        for path in created:
            if path.exists() and path.stat().st_size == 0:
                path.unlink()


def _ensure_sub_ids(name: str) -> None:
    """useradd adds subordinate ids when the files exist; add them by hand where it did not."""
    for kind, flag in (("subuid", "--add-subuids"), ("subgid", "--add-subgids")):
        lines = (Path("/etc") / kind).read_text().splitlines()
        if any(line.split(":")[0] == name for line in lines):
            continue
        ends = [int(f[1]) + int(f[2]) for f in (line.split(":") for line in lines) if len(f) == 3]
        first = max([100000, *ends])
        subprocess.run(
            ["usermod", flag, f"{first}-{first + SUB_IDS - 1}", name],
            check=True,
            capture_output=True,
        )


@contextlib.contextmanager
def _fuse_device_for_everyone() -> Iterator[None]:
    mode = stat.S_IMODE(FUSE_DEVICE.stat().st_mode)
    FUSE_DEVICE.chmod(0o666)
    try:
        yield
    finally:
        FUSE_DEVICE.chmod(mode)


def _python_env(base: Path, uid: int, gid: int, mounts: list[Path]) -> Path:
    """A virtualenv the user can run, seeing this checkout and the test venv's packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    for source, target in ((CHECKOUT, base / "src"), (site, base / "site")):
        target.mkdir()
        subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], check=True)
        mounts.append(target)
    venv = _venv_for(base / "venv", uid, gid)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    pth = venv / "lib" / version / "site-packages" / "layerfs-checkout.pth"
    pth.write_text(f"{base / 'src'}\n{base / 'site'}\n")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    python = venv / "bin" / "python"
    for script, target in (
        ("layerfs", "layerfs.cli.main"),
        ("mount.fuse.layerfs", "layerfs.cli.mount_helper"),
    ):
        launcher = bin_dir / script
        launcher.write_text(
            f"#!{python}\nimport sys\nfrom {target} import main\nsys.exit(main())\n"
        )
        launcher.chmod(0o755)
    return python


def _venv_for(venv: Path, uid: int, gid: int) -> Path:
    """A virtualenv of this Python's version whose interpreter the user can run: made from this
    interpreter, else from the system's ``pythonX.Y`` (the test venv's may be in root's home)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys._base_executable).resolve(), Path("/usr/bin") / version]  # type: ignore[attr-defined]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    for candidate in candidates:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(candidate), "-m", "venv", "--without-pip", str(venv)], check=True)
        probe = [*drop, "env", str(venv / "bin" / "python"), "-c", "pass"]
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return venv
    raise RuntimeError(f"no {version} that an unprivileged user can run: {candidates}")


def _user_env(base: Path, uid: int, gid: int) -> dict[str, str]:
    runtime = base / "xdg"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, uid, gid)
    return {
        "HOME": str(base / "home"),
        "XDG_RUNTIME_DIR": str(runtime),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def processes_of(uid: int) -> list[int]:
    """Pids of the live processes of the user *uid*: its own uid or one of its subordinate ids
    (processes in its containers), zombies left out."""
    owned = _owned_uids(uid)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, StopIteration, ValueError):
            lines = (entry / "status").read_text().splitlines()
            state = next(line for line in lines if line.startswith("State:")).split()[1]
            real = int(next(line for line in lines if line.startswith("Uid:")).split()[1])
            if state != "Z" and any(real in r for r in owned):
                pids.append(int(entry.name))
    return pids


def _owned_uids(uid: int) -> list[range]:
    owned = [range(uid, uid + 1)]
    with contextlib.suppress(OSError, KeyError):
        name = pwd.getpwuid(uid).pw_name
        for line in Path("/etc/subuid").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 3 and fields[0] in (name, str(uid)):
                owned.append(range(int(fields[1]), int(fields[1]) + int(fields[2])))
    return owned


def kill_processes_of(uid: int) -> None:
    """SIGKILL every process of the test user and its containers (each by its pid), and wait
    until they are gone."""
    deadline = time.monotonic() + 10
    while (pids := processes_of(uid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_tree(base: Path) -> None:
    for entry in sorted(mountinfo.under(base), key=lambda e: -len(e.mountpoint.parts)):
        subprocess.run(["umount", "-l", str(entry.mountpoint)], check=False)
    shutil.rmtree(base, ignore_errors=True)
