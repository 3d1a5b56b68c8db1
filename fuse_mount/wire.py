"""The FUSE wire format: the kernel's ``include/uapi/linux/fuse.h`` as named Python values.

Every structure the native backend reads from or writes to ``/dev/fuse`` is a
:class:`struct.Struct` here, in host byte order without implicit padding (the header's own
padding fields are spelled out), named after the C structure; every flag and opcode is a named
constant. Handlers never use an offset or a size that is not one of these.
"""

from __future__ import annotations

import enum
import functools
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerfs.types import Stat, StatFs

KERNEL_MAJOR = 7
KERNEL_MINOR = 45  # the newest minor version this module speaks
OLDEST_MINOR = 31  # older kernels are refused at INIT (Linux 5.9 speaks 7.31)
ROOT_ID = 1


class Op(enum.IntEnum):
    """``enum fuse_opcode``."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


class Notify(enum.IntEnum):
    """``enum fuse_notify_code``: sent as the error field of a header whose unique is 0."""

    INVAL_INODE = 2
    INVAL_ENTRY = 3


# INIT flags (fuse_init_in.flags / fuse_init_out.flags; bits 32..63 travel in flags2)
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
POSIX_ACL = 1 << 20
ABORT_ERROR = 1 << 21
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37
NO_EXPORT_SUPPORT = 1 << 38

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5
FOPEN_PASSTHROUGH = 1 << 7

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8

GETATTR_FH = 1 << 0  # fuse_getattr_in.getattr_flags
FSYNC_FDATASYNC = 1 << 0  # fuse_fsync_in.fsync_flags

# The kernel's renameat2 flags, as RENAME2 carries them
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

# /dev/fuse ioctls: _IOR/_IOW(229, nr, size)
_IOC_WRITE, _IOC_READ = 1, 2
DEV_IOC_MAGIC = 229


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (DEV_IOC_MAGIC << 8) | nr


DEV_IOC_CLONE = _ioc(_IOC_READ, 0, 4)
DEV_IOC_BACKING_OPEN = _ioc(_IOC_WRITE, 1, 16)
DEV_IOC_BACKING_CLOSE = _ioc(_IOC_WRITE, 2, 4)

FILESYSTEM_MAX_STACK_DEPTH = 2  # the kernel's limit for max_stack_depth

# -- structures ---------------------------------------------------------------------------
IN_HEADER = struct.Struct("=IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("=IiQ")  # len error unique
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")  # fuse_attr
ENTRY_OUT_HEAD = struct.Struct("=QQQQII")  # nodeid generation entry_valid attr_valid nsecs
ATTR_OUT_HEAD = struct.Struct("=QII")  # attr_valid attr_valid_nsec dummy
ENTRY_OUT = struct.Struct("=QQQQIIQQQQQQIIIIIIIIII")  # ENTRY_OUT_HEAD + ATTR
ATTR_OUT = struct.Struct("=QIIQQQQQQIIIIIIIIII")  # ATTR_OUT_HEAD + ATTR
INIT_IN = struct.Struct("=IIII")  # major minor max_readahead flags
INIT_IN_FLAGS2 = struct.Struct("=I")  # follows INIT_IN when INIT_EXT is set
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")
GETATTR_IN = struct.Struct("=IIQ")  # getattr_flags dummy fh
SETATTR_IN = struct.Struct("=IIQQQQQQIIIIIIII")
MKNOD_IN = struct.Struct("=IIII")  # mode rdev umask padding
MKDIR_IN = struct.Struct("=II")  # mode umask
RENAME_IN = struct.Struct("=Q")  # newdir
RENAME2_IN = struct.Struct("=QII")  # newdir flags padding
LINK_IN = struct.Struct("=Q")  # oldnodeid
OPEN_IN = struct.Struct("=II")  # flags open_flags
OPEN_OUT = struct.Struct("=QIi")  # fh open_flags backing_id
CREATE_IN = struct.Struct("=IIII")  # flags mode umask open_flags
RELEASE_IN = struct.Struct("=QIIQ")  # fh flags release_flags lock_owner
READ_IN = struct.Struct("=QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN = READ_IN  # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("=II")  # size padding
KSTATFS = struct.Struct("=QQQQQIII28x")  # blocks bfree bavail files ffree bsize namelen frsize
FSYNC_IN = struct.Struct("=QII")  # fh fsync_flags padding
FALLOCATE_IN = struct.Struct("=QQQII")  # fh offset length mode padding
SETXATTR_IN = struct.Struct("=IIII")  # size flags setxattr_flags padding (SETXATTR_EXT)
SETXATTR_IN_COMPAT = struct.Struct("=II")  # size flags
GETXATTR_IN = struct.Struct("=II")  # size padding
GETXATTR_OUT = struct.Struct("=II")  # size padding
ACCESS_IN = struct.Struct("=II")  # mask padding
FORGET_IN = struct.Struct("=Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("=II")  # count dummy
FORGET_ONE = struct.Struct("=QQ")  # nodeid nlookup
INTERRUPT_IN = struct.Struct("=Q")  # unique
DIRENT = struct.Struct("=QQII")  # ino off namelen type
NOTIFY_INVAL_INODE_OUT = struct.Struct("=Qqq")  # ino off len
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("=QII")  # parent namelen flags
BACKING_MAP = struct.Struct("=iIQ")  # fd flags padding
BACKING_ID = struct.Struct("=I")

assert IN_HEADER.size == 40 and OUT_HEADER.size == 16 and ATTR.size == 88
assert ENTRY_OUT.size == 128 and ATTR_OUT.size == 104 and INIT_OUT.size == 64
assert SETATTR_IN.size == 88 and KSTATFS.size == 80 and READ_IN.size == 40


@functools.cache
def valid(timeout: float) -> tuple[int, int]:
    """A cache timeout in seconds as the kernel's ``(seconds, nanoseconds)`` pair (a mount
    uses two or three timeouts, so each is split once)."""
    sec = int(timeout)
    return sec, int((timeout - sec) * 1e9)


_NEGATIVE_ATTR = (0,) * 16


def entry_out(nodeid: int, st: Stat | None, entry_timeout: float, attr_timeout: float) -> bytes:
    """``struct fuse_entry_out``: nodeid 0 (no attributes) is a negative entry.

    Every lookup and every readdirplus entry is one of these: one ``pack`` call, and no
    objects but the field tuple.
    """
    e_s, e_ns = valid(entry_timeout)
    if st is None:
        return ENTRY_OUT.pack(0, 0, e_s, 0, e_ns, 0, *_NEGATIVE_ATTR)
    a_s, a_ns = valid(attr_timeout)
    ino, mode, nlink, uid, gid, rdev, size, blocks, blksize, atime, mtime, ctime = st
    at_s, at_ns = divmod(atime, 1_000_000_000)
    mt_s, mt_ns = divmod(mtime, 1_000_000_000)
    ct_s, ct_ns = divmod(ctime, 1_000_000_000)
    return ENTRY_OUT.pack(
        nodeid, 0, e_s, a_s, e_ns, a_ns,
        ino, size, blocks, at_s, mt_s, ct_s, at_ns, mt_ns, ct_ns,
        mode, nlink, uid, gid, rdev & 0xFFFFFFFF, blksize, 0,
    )  # fmt: skip


def attr_out(st: Stat, timeout: float) -> bytes:
    """``struct fuse_attr_out``."""
    a_s, a_ns = valid(timeout)
    ino, mode, nlink, uid, gid, rdev, size, blocks, blksize, atime, mtime, ctime = st
    at_s, at_ns = divmod(atime, 1_000_000_000)
    mt_s, mt_ns = divmod(mtime, 1_000_000_000)
    ct_s, ct_ns = divmod(ctime, 1_000_000_000)
    return ATTR_OUT.pack(
        a_s, a_ns, 0,
        ino, size, blocks, at_s, mt_s, ct_s, at_ns, mt_ns, ct_ns,
        mode, nlink, uid, gid, rdev & 0xFFFFFFFF, blksize, 0,
    )  # fmt: skip


def kstatfs(st: StatFs) -> bytes:
    return KSTATFS.pack(
        st.blocks, st.bfree, st.bavail, st.files, st.ffree, st.bsize, st.namemax, st.frsize
    )


DIRENT_PADDING = tuple(b"\0" * n for n in range(8))  # what pads a name to 8 bytes


def cstring(data: bytes, start: int = 0) -> tuple[bytes, int]:
    """The NUL-terminated string at *start* of *data*, and the offset just past its NUL."""
    end = data.find(b"\0", start)
    if end < 0:
        end = len(data)
    return data[start:end], end + 1
