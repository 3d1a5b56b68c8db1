"""Host filesystem access that cannot be led out of a layer root.

Every host object layerfs touches is reached from a directory file descriptor plus one name,
with ``O_NOFOLLOW`` / ``AT_SYMLINK_NOFOLLOW``: a symlink stored in a layer is data, never a path
the library walks. Multi-component paths are resolved with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` where the kernel has it, and otherwise one component at a time with
``O_NOFOLLOW``. Calls that have no ``*at`` form without following (xattrs, chmod) go through an
``O_PATH`` descriptor and its ``/proc/self/fd`` entry, which names the object itself.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from layerfs.errors import oserror

O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_PATH_ANY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_SYS_OPENAT2 = 437  # x86_64, aarch64 and most others share this number
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None


def _openat2(dirfd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise oserror(err, path)
    return int(fd)


def _open_walk(dirfd: int, path: str, flags: int) -> int:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise oserror(errno.EXDEV, path)
    current = os.open(".", O_PATH_DIR, dir_fd=dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, O_PATH_DIR, dir_fd=current)
            os.close(current)
            current = nxt
        last = parts[-1] if parts else "."
        return os.open(last, flags | os.O_NOFOLLOW, dir_fd=current)
    finally:
        os.close(current)


def open_beneath(dirfd: int, path: str, flags: int = O_PATH_DIR) -> int:
    """Open *path* relative to *dirfd* without following any symlink or leaving *dirfd*.

    Raises ``ELOOP`` (or ``ENOTDIR``) where a component is a symlink and ``EXDEV`` for ``..``.
    """
    global _openat2_works
    if _openat2_works is not False:
        try:
            fd = _openat2(dirfd, path or ".", flags | os.O_CLOEXEC)
            _openat2_works = True
            return fd
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM) or _openat2_works:
                raise
            _openat2_works = False
    return _open_walk(dirfd, path, flags | os.O_CLOEXEC)


def open_dir_at(dirfd: int, name: str) -> int:
    """Open directory *name* (never through a symlink) to be listed, read and used as a base.

    A readable descriptor serves ``scandir`` and ``fgetxattr`` directly, where an ``O_PATH`` one
    needs a second ``open`` or a ``/proc/self/fd`` path walk each time; a directory the caller
    may search but not read falls back to ``O_PATH``.
    """
    try:
        return os.open(name, O_READ_DIR, dir_fd=dirfd)
    except PermissionError:
        return os.open(name, O_PATH_DIR, dir_fd=dirfd)


def fd_getxattr(fd: int, attr: str) -> bytes | None:
    """The value of xattr *attr* of the object open as *fd* (``O_PATH`` too), or None."""
    try:
        try:
            return os.getxattr(fd, attr)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return os.getxattr(f"/proc/self/fd/{fd}", attr)  # an O_PATH descriptor
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return None
        raise


def fd_listxattr(fd: int) -> list[str]:
    """The xattr names of the object open as *fd* (``O_PATH`` too); [] where unsupported."""
    try:
        try:
            return os.listxattr(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return os.listxattr(f"/proc/self/fd/{fd}")  # an O_PATH descriptor
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return []
        raise


def fd_setxattr(fd: int, attr: str, value: bytes) -> None:
    """Set xattr *attr* of the object open as *fd* (``O_PATH`` too)."""
    try:
        os.setxattr(fd, attr, value)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        os.setxattr(f"/proc/self/fd/{fd}", attr, value)  # an O_PATH descriptor


def open_root(path: str | os.PathLike[str]) -> int:
    """Open a layer root directory like :func:`open_dir_at` (the root itself may be a link)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def lstat_at(dirfd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def lstat_or_none(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


@contextmanager
def opath(dirfd: int, name: str) -> Iterator[str]:
    """Yield a ``/proc/self/fd`` path naming the object *name* itself (never a link's target)."""
    fd = os.open(name, O_PATH_ANY, dir_fd=dirfd)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def getxattr_at(dirfd: int, name: str, attr: str) -> bytes | None:
    """The value of xattr *attr* of *name*, or None when it has none."""
    with opath(dirfd, name) as p:
        try:
            return os.getxattr(p, attr)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
                return None
            raise


def listxattr_at(dirfd: int, name: str) -> list[str]:
    with opath(dirfd, name) as p:
        try:
            return os.listxattr(p)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return []
            raise


def setxattr_at(dirfd: int, name: str, attr: str, value: bytes, flags: int = 0) -> None:
    with opath(dirfd, name) as p:
        os.setxattr(p, attr, value, flags)


def removexattr_at(dirfd: int, name: str, attr: str) -> None:
    with opath(dirfd, name) as p:
        os.removexattr(p, attr)


def chmod_at(dirfd: int, name: str, mode: int) -> None:
    """chmod without following: a symlink's mode cannot change (EOPNOTSUPP, as on Linux)."""
    with opath(dirfd, name) as p:
        os.chmod(p, stat.S_IMODE(mode))


def chown_at(dirfd: int, name: str, uid: int, gid: int) -> None:
    os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


def utime_at(dirfd: int, name: str, atime_ns: int, mtime_ns: int) -> None:
    os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=dirfd, follow_symlinks=False)


def copy_xattrs(src_dirfd: int, src: str, dst_dirfd: int, dst: str) -> None:
    """Copy every xattr of *src* that is not private to overlayfs onto *dst*."""
    from layerfs.whiteout import is_private_xattr

    with opath(src_dirfd, src) as sp, opath(dst_dirfd, dst) as dp:
        try:
            names = os.listxattr(sp)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return
            raise
        for attr in names:
            if is_private_xattr(attr):
                continue
            try:
                value = os.getxattr(sp, attr)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    continue
                raise
            os.setxattr(dp, attr, value)


def copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy the first *size* bytes in the kernel, region by region of data, so the copy keeps
    the source's holes as kernel overlayfs's copy-up does (a sparse ``lastlog`` stays small);
    the destination is then at least *size* long. A source whose filesystem does not report
    holes is one region."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data past offset, a hole to the end
                raise
            break
        if start >= size:
            break
        try:
            end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            end = size  # the file shrank under us; copy what the range copy finds
        copied = _copy_range(src_fd, dst_fd, start, end - start)
        if copied < end - start:
            return  # the source shrank under us; the caller's size was an upper bound
        offset = end
    if os.fstat(dst_fd).st_size < size:
        os.ftruncate(dst_fd, size)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with its *mode* flags (``os.posix_fallocate`` has none)."""
    if _libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
        raise oserror(ctypes.get_errno())


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> int:
    """Bytes ``[offset, offset + count)`` copied to the same offset (``copy_file_range``,
    falling back to ``sendfile``); how many there were."""
    done = 0
    use_cfr = True
    while done < count:
        chunk = min(count - done, 1 << 30)
        at = offset + done
        if use_cfr:
            try:
                n = os.copy_file_range(src_fd, dst_fd, chunk, at, at)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                use_cfr = False
                continue
        else:
            os.lseek(dst_fd, at, os.SEEK_SET)
            n = os.sendfile(dst_fd, src_fd, at, chunk)
        if n == 0:
            break
        done += n
    return done


MAX_HANDLE_SZ = 128  # bytes of a file handle, the kernel's bound
_AT_EMPTY_PATH = 0x1000
_FS_IOC_GETFSUUID = 0x80111500  # _IOR(0x15, 0, struct fsuuid2 {u8 len; u8 uuid[16]})
NULL_UUID = bytes(16)


class _FileHandle(ctypes.Structure):
    _fields_ = (
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    )


def file_handle(dirfd: int, name: str) -> tuple[int, bytes] | None:
    """``name_to_handle_at`` of *name* (never through a link): ``(type, bytes)``.

    None where the object is missing or its filesystem cannot encode handles. Needs no
    privilege; the handle names the object itself, whatever its path, for as long as it exists.
    """
    handle = _FileHandle(MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    flags = _AT_EMPTY_PATH if name in ("", ".") else 0
    path = os.fsencode("" if name == "." else name)
    rc = _libc.name_to_handle_at(dirfd, path, ctypes.byref(handle), ctypes.byref(mount_id), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR, errno.EOPNOTSUPP, errno.EOVERFLOW, errno.ENOSYS):
            return None
        raise oserror(err, name)
    return handle.handle_type, bytes(handle.f_handle[: handle.handle_bytes])


def open_by_handle(mount_fd: int, handle_type: int, handle: bytes) -> int | None:
    """``open_by_handle_at`` (``O_PATH``) of an object on *mount_fd*'s filesystem, or None.

    None where the handle names nothing there (``ESTALE``) or is not of that filesystem.
    Raises ``PermissionError`` without ``CAP_DAC_READ_SEARCH``.
    """
    if len(handle) > MAX_HANDLE_SZ:
        return None
    buf = _FileHandle(len(handle), handle_type)
    ctypes.memmove(buf.f_handle, handle, len(handle))
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(buf), os.O_PATH | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.ESTALE, errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
            return None
        raise oserror(err)
    return int(fd)


def fs_uuid(fd: int) -> bytes:
    """The UUID of the filesystem *fd* is on (``FS_IOC_GETFSUUID``), or 16 zero bytes."""
    buf = bytearray(17)
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFSUUID, buf)
    except OSError:
        return NULL_UUID
    return bytes(buf[1 : 1 + buf[0]]).ljust(16, b"\0")[:16]


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

_renameat2 = _libc.renameat2
_renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
_renameat2.restype = ctypes.c_int


def rename_at(src_dirfd: int, src: str, dst_dirfd: int, dst: str, flags: int = 0) -> None:
    """``renameat2``: flags RENAME_NOREPLACE, RENAME_EXCHANGE or RENAME_WHITEOUT."""
    if flags == 0:
        os.rename(src, dst, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd)
        return
    if _renameat2(src_dirfd, os.fsencode(src), dst_dirfd, os.fsencode(dst), flags) != 0:
        raise oserror(ctypes.get_errno(), src, dst)


def make_whiteout(dirfd: int, name: str) -> None:
    """Create an overlayfs whiteout (character device 0/0, mode 0) named *name*."""
    from layerfs.whiteout import WHITEOUT_MODE, WHITEOUT_RDEV

    os.mknod(name, WHITEOUT_MODE, WHITEOUT_RDEV, dir_fd=dirfd)


def remove_tree(dirfd: int, name: str) -> None:
    """Delete *name* below *dirfd* recursively, never following a symlink."""
    st = lstat_or_none(dirfd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        for entry in os.scandir(fd):
            remove_tree(fd, entry.name)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)
