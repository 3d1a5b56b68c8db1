"""What this process may do on the host: real privilege, its user as seen from outside, probes.

Inside a user namespace a process can be uid 0 and hold every capability without being root:
it cannot write ``trusted.*`` xattrs, create files as unmapped users or write to ``/run``.
podman runs a mount program exactly so (uid 0 in the rootless user namespace), so ``euid ==
0`` is not the test. *Privileged* here means: running in the initial user namespace with
``CAP_SYS_ADMIN`` in the effective set, the capability the kernel asks for before it lets a
process write ``trusted.*`` xattrs.

Whether 0/0 character-device whiteouts can be made is not a question of privilege alone
(kernels since 5.8 let anyone make them, some filesystems refuse them), so it is probed in
the directory that will hold them.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from layerfs import hostfs
from layerfs.whiteout import UpperFormat, WhiteoutStyle

UID_MAP = Path("/proc/self/uid_map")
STATUS = Path("/proc/self/status")
CAP_SYS_ADMIN = 21
# The initial user namespace maps every id to itself: "0 0 4294967295".
_IDENTITY_MAP = [(0, 0, 4294967295)]
# What mknod/renameat2 answer where whiteouts cannot be made (no privilege, no support).
_REFUSALS = frozenset({errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def read_id_map(path: Path = UID_MAP) -> list[tuple[int, int, int]]:
    """``(inside, outside, count)`` lines of a ``uid_map``/``gid_map`` file."""
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 3:
            rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return rows


def in_initial_user_namespace(uid_map: list[tuple[int, int, int]] | None = None) -> bool:
    """Whether this process runs in the initial user namespace (its uid map is the identity)."""
    return (read_id_map() if uid_map is None else uid_map) == _IDENTITY_MAP


def effective_capabilities(status: str | None = None) -> int:
    """The ``CapEff`` mask of this process (0 where ``/proc`` does not say)."""
    text = STATUS.read_text() if status is None else status
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    return 0


def is_privileged() -> bool:
    """Whether this process may write ``trusted.*`` xattrs: ``CAP_SYS_ADMIN`` in the initial
    user namespace. False for uid 0 inside a user namespace (rootless podman)."""
    return in_initial_user_namespace() and bool(effective_capabilities() >> CAP_SYS_ADMIN & 1)


def layer_format() -> UpperFormat:
    """How a layer directory this process writes records whiteouts and opaque directories.

    With real privilege, the kernel's form (0/0 character devices, ``trusted.overlay.*``),
    which kernel overlayfs and layerfs both read; otherwise ``.wh.`` files and
    ``user.overlay.*``, which layerfs reads. uid 0 of a user namespace gets the second: it can
    neither write ``trusted.*`` xattrs nor make device nodes.
    """
    return UpperFormat() if is_privileged() else UpperFormat.unprivileged()


def is_host_root() -> bool:
    """Whether this process is uid 0 of the initial user namespace (owns ``/run``)."""
    return os.geteuid() == 0 and in_initial_user_namespace()


def outer_uid(uid: int | None = None, uid_map: list[tuple[int, int, int]] | None = None) -> int:
    """*uid* (default: the effective uid) as the parent user namespace sees it.

    The same person has the same outer uid inside and outside podman's user namespace, so
    per-user paths keyed by it are shared by both. An unmapped uid is returned unchanged.
    """
    uid = os.geteuid() if uid is None else uid
    for inside, outside, count in read_id_map() if uid_map is None else uid_map:
        if inside <= uid < inside + count:
            return outside + (uid - inside)
    return uid


@contextlib.contextmanager
def owner_must_be_mapped(path: str, uid: int, gid: int) -> Iterator[None]:
    """Say why a chown to *uid*:*gid* of *path* failed where the kernel only says ``EINVAL``.

    uid 0 of a user namespace may give files only the ids its namespace maps; a layer or a
    volume with other owners (an image built for ids that ``/etc/subuid`` does not grant)
    then fails, as it does for podman, with the ids and the path named.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise OSError(
            errno.EINVAL,
            f"cannot give {path} the owner {uid}:{gid}: this user namespace does not map "
            "these ids (see /etc/subuid and /etc/subgid)",
        ) from exc


def whiteout_style_for(directory: Path) -> WhiteoutStyle:
    """``CHARDEV`` if this process can make 0/0 character devices in *directory* and replace a
    file by one with ``RENAME_WHITEOUT`` (both are how layerfs writes whiteouts), else
    ``WH_FILE``. A directory that cannot be probed at all (missing, not writable) answers
    ``CHARDEV``; whoever uses it reports that error.
    """
    try:
        dirfd = os.open(directory, hostfs.O_READ_DIR)
    except OSError:
        return WhiteoutStyle.CHARDEV
    tag = f".layerfs-probe-{os.getpid()}-{os.urandom(4).hex()}"
    names = [tag + "-a", tag + "-b", tag + "-c"]
    try:
        hostfs.make_whiteout(dirfd, names[0])
        os.close(os.open(names[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dirfd))
        hostfs.rename_at(dirfd, names[1], dirfd, names[2], hostfs.RENAME_WHITEOUT)
    except OSError as exc:
        return WhiteoutStyle.WH_FILE if exc.errno in _REFUSALS else WhiteoutStyle.CHARDEV
    finally:
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dirfd)
        os.close(dirfd)
    return WhiteoutStyle.CHARDEV
