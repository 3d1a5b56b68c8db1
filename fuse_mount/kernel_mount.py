"""Mounting a FUSE filesystem without libfuse: a ``/dev/fuse`` descriptor for the session.

As root, :func:`mount` opens ``/dev/fuse`` and calls mount(2) itself with the kernel's
``fd=,rootmode=,user_id=,group_id=`` options. Without root (or with ``auto_unmount``, which
only fusermount3 implements) it runs the setuid ``fusermount3`` and receives the device
descriptor over a socket named in ``_FUSE_COMMFD``, libfuse's convention; with
``auto_unmount`` fusermount3 stays alive on that socket and unmounts when it closes.
:func:`unmount` detaches the mount the same two ways.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fuse_mount.mount import MountFailedError

if TYPE_CHECKING:  # imported where used: a mount as root needs none of them
    import socket
    import subprocess

FUSE_DEVICE = "/dev/fuse"
FUSERMOUNT = "fusermount3"
MNT_DETACH = 2

# mount(2) flags of the generic options (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
_FLAG_OPTIONS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "sync": MS_SYNCHRONOUS,
    "dirsync": MS_DIRSYNC,
    "noatime": MS_NOATIME,
}
_CLEARS = {"suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC, "async": MS_SYNCHRONOUS}
_DATA_OPTIONS = ("default_permissions", "allow_other")
_IGNORED = frozenset({"rw", "atime", "allow_root", "auto_unmount"})

# The C library this process already has loaded (find_library would run ldconfig: a fork
# and an exec in every mount).
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class KernelMount:
    """A mounted FUSE filesystem: the session's device descriptor and how to undo it."""

    mountpoint: Path
    fd: int
    privileged: bool
    helper: subprocess.Popen[bytes] | None = None  # fusermount3 kept for auto_unmount
    helper_socket: socket.socket | None = field(default=None, repr=False)


def mount(mountpoint: Path, fuse_options: frozenset[str]) -> KernelMount:
    """Mount an empty FUSE filesystem on *mountpoint*; the kernel sends INIT next.

    Raises :class:`MountFailedError` with the kernel's or fusermount3's reason.
    """
    if os.geteuid() == 0 and "auto_unmount" not in fuse_options:
        return _mount_as_root(mountpoint, fuse_options)
    return _mount_with_fusermount(mountpoint, fuse_options)


def _split(fuse_options: frozenset[str]) -> tuple[int, list[str], str, str]:
    """mount(2) flags, filesystem data options, source and type from the FUSE options.

    ``nosuid,nodev`` unless ``suid``/``dev`` are given, as libfuse and fusermount3 do.
    """
    flags = MS_NOSUID | MS_NODEV
    data: list[str] = []
    fsname, subtype = "layerfs", "layerfs"
    for option in sorted(fuse_options):
        key, _, value = option.partition("=")
        if option in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[option]
        elif option in _DATA_OPTIONS:
            data.append(option)
        elif key == "fsname":
            fsname = value
        elif key == "subtype":
            subtype = value
    for option, bit in _CLEARS.items():
        if option in fuse_options:
            flags &= ~bit
    return flags, data, fsname, subtype


def _mount_as_root(mountpoint: Path, fuse_options: frozenset[str]) -> KernelMount:
    flags, data, fsname, subtype = _split(fuse_options)
    fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        root_mode = stat.S_IFMT(os.stat(mountpoint).st_mode)
        kernel = [f"fd={fd}", f"rootmode={root_mode:o}", f"user_id={os.getuid()}"]
        kernel.append(f"group_id={os.getgid()}")
        text = ",".join(kernel + data)
        if _libc.mount(
            fsname.encode(), os.fsencode(mountpoint), f"fuse.{subtype}".encode(), flags,
            text.encode(),
        ) != 0:  # fmt: skip
            err = ctypes.get_errno()
            raise MountFailedError(f"cannot mount {mountpoint}: {os.strerror(err)}")
    except BaseException:
        os.close(fd)
        raise
    return KernelMount(mountpoint, fd, privileged=True)


def _fusermount_options(fuse_options: frozenset[str]) -> str:
    """The ``-o`` list fusermount3 understands (it adds nosuid,nodev itself for users)."""
    known = {*_FLAG_OPTIONS, *_CLEARS, *_DATA_OPTIONS, "auto_unmount", "rw", "allow_root"}
    keep = [
        option
        for option in sorted(fuse_options)
        if option in known or option.partition("=")[0] in ("fsname", "subtype")
    ]
    return ",".join(keep)


def _mount_with_fusermount(mountpoint: Path, fuse_options: frozenset[str]) -> KernelMount:
    import shutil
    import socket
    import subprocess

    tool = shutil.which(FUSERMOUNT)
    if tool is None:
        raise MountFailedError(f"cannot mount {mountpoint}: {FUSERMOUNT} is not installed")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    keep = "auto_unmount" in fuse_options
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        argv = [tool, "-o", _fusermount_options(fuse_options), "--", str(mountpoint)]
        helper = subprocess.Popen(
            argv, env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        theirs.close()
        fd = _receive_fd(ours)
        if fd is None:
            err = helper.communicate()[1].decode(errors="replace").strip().splitlines()
            reason = err[-1] if err else f"{FUSERMOUNT} exited with {helper.returncode}"
            raise MountFailedError(f"cannot mount {mountpoint}: {reason}")
        os.set_inheritable(fd, False)
        if not keep:
            helper.wait()
            ours.close()
            return KernelMount(mountpoint, fd, privileged=False)
        return KernelMount(mountpoint, fd, False, helper, ours)
    except BaseException:
        ours.close()
        theirs.close()
        raise


def _receive_fd(sock: socket.socket) -> int | None:
    """The descriptor fusermount3 sends with SCM_RIGHTS, or None when it sent none."""
    import socket

    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    except OSError:
        return None
    return fds[0] if fds else None


def unmount(mounted: KernelMount) -> None:
    """Detach the mount (lazily: open files keep it alive until closed) if it still exists.

    Errors are ignored: the mount may already be gone (an outside unmount).
    """
    if mounted.privileged:
        _libc.umount2(os.fsencode(mounted.mountpoint), MNT_DETACH)
    else:
        import shutil
        import subprocess

        tool = shutil.which(FUSERMOUNT)
        if tool is not None:
            subprocess.run(
                [tool, "-u", "-q", "-z", "--", str(mounted.mountpoint)],
                stdin=subprocess.DEVNULL, capture_output=True, check=False,
            )  # fmt: skip


def close(mounted: KernelMount) -> None:
    """Close the session's descriptor (aborting what is still pending) and any helper."""
    os.close(mounted.fd)
    if mounted.helper_socket is not None:
        mounted.helper_socket.close()
    if mounted.helper is not None:
        mounted.helper.wait()
