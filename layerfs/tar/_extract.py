"""Writing checked tar entries into a directory without ever leaving it.

Every host operation starts from a directory descriptor opened with ``openat2(RESOLVE_BENEATH
| RESOLVE_NO_SYMLINKS)`` (:func:`layerfs.hostfs.open_beneath`) and then touches one name with
``O_NOFOLLOW`` / ``AT_SYMLINK_NOFOLLOW``. A symlink on the way to an entry is therefore never
walked through: it makes the entry unsafe, whether the layer created it or it was already in
the tree. An entry that names an existing object replaces it (unlink, or remove the whole
subtree for a directory replaced by a non-directory); a directory over a directory is merged.
Directory metadata is applied last, deepest first, so that later entries neither bump a
directory's mtime nor run into a read-only directory.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from layerfs import hostfs
from layerfs.tar._entries import Entry, Kind, malformed, unsafe
from layerfs.tar._streams import CHUNK
from layerfs.whiteout import (
    OPAQUE_VALUE,
    UpperFormat,
    WhiteoutStyle,
    is_private_xattr,
    whiteout_file_name,
)

log = logging.getLogger(__name__)

XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
_DIR_CREATE_MODE = 0o700  # until the entry's own mode is applied at the end
_FILE_CREATE_MODE = 0o600
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

ReadFn = Callable[[int], bytes]


def may_create_devices() -> bool:
    """Device nodes are created only by root (a layer must not hand anyone else a device)."""
    return os.geteuid() == 0


@dataclass(slots=True)
class _Meta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    """PAX ``SCHILY.xattr.*``/``LIBARCHIVE.xattr.*`` records; overlayfs' own ones are dropped.

    A layer must not smuggle ``trusted.overlay.redirect`` and friends into a lower layer.
    """
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        for prefix in XATTR_PREFIXES:
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if name and not is_private_xattr(name):
                    found[name] = value.encode("utf-8", "surrogateescape")
    return found


def _meta_of(member: tarfile.TarInfo) -> _Meta:
    return _Meta(
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=round(member.mtime * 1_000_000_000),
        xattrs=_xattrs_of(member),
    )


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


class Extractor:
    """Applies entries under *root_fd*; ``rootfs`` selects whiteouts-delete semantics."""

    def __init__(
        self, root_fd: int, *, rootfs: bool, upper_format: UpperFormat, same_owner: bool
    ) -> None:
        self._root = root_fd
        self._rootfs = rootfs
        self._format = upper_format
        self._same_owner = same_owner
        self._dirs: dict[str, _Meta] = {}
        self._fds: dict[str, int] = {}
        self._retired: list[int] = []  # closed between entries, never under a caller's feet
        self._layer_paths: set[str] = {""}

    # -- directories -------------------------------------------------------------------
    def close(self) -> None:
        self._forget_fds()
        self._close_retired()

    def _forget_fds(self, under: str | None = None) -> None:
        """Drop cached descriptors (all, or those of *under* and below) once safe to close."""
        if under is None:
            self._retired.extend(self._fds.values())
            self._fds.clear()
            return
        prefix = under + "/"
        for key in [k for k in self._fds if k == under or k.startswith(prefix)]:
            self._retired.append(self._fds.pop(key))

    def _close_retired(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _dir_fd(self, path: str, entry: Entry) -> int:
        """An O_PATH descriptor of directory *path*, created (0755) where missing."""
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        try:
            fd = hostfs.open_beneath(self._root, path) if path else os.dup(self._root)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise
            fd = self._walk_creating(path, entry)
        if len(self._fds) >= 64:
            self._forget_fds()
        self._fds[path] = fd
        return fd

    def _walk_creating(self, path: str, entry: Entry) -> int:
        fd = os.dup(self._root)
        done: list[str] = []
        try:
            for part in path.split("/"):
                st = hostfs.lstat_or_none(fd, part)
                if st is None:
                    os.mkdir(part, 0o755, dir_fd=fd)
                elif stat.S_ISLNK(st.st_mode):
                    raise unsafe(entry.raw, f"parent {'/'.join([*done, part])!r} is a symlink")
                elif not stat.S_ISDIR(st.st_mode):
                    raise malformed(
                        entry.raw, f"parent {'/'.join([*done, part])!r} is not a directory"
                    )
                nxt = os.open(part, hostfs.O_PATH_DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
                done.append(part)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _remember(self, path: str) -> None:
        """Mark *path* and its ancestors as part of this layer (opaque dirs keep them)."""
        while path not in self._layer_paths:
            self._layer_paths.add(path)
            path = path.rpartition("/")[0]

    def _remove(self, parent_fd: int, name: str, path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=parent_fd)
            self._forget_fds(path)
            prefix = path + "/"
            for key in [k for k in self._dirs if k == path or k.startswith(prefix)]:
                del self._dirs[key]
        else:
            os.unlink(name, dir_fd=parent_fd)

    def _make_room(self, parent_fd: int, entry: Entry, keep_dir: bool) -> bool:
        """Remove what is at the entry's name; True when a directory there is kept."""
        st = hostfs.lstat_or_none(parent_fd, entry.name)
        if st is None:
            return False
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        self._remove(parent_fd, entry.name, entry.path, st)
        return False

    # -- entries -----------------------------------------------------------------------
    def apply(self, entry: Entry, member: tarfile.TarInfo, read: ReadFn) -> None:
        """Write *entry*; *read* yields the member's data bytes (only files consume it)."""
        self._close_retired()
        kind = entry.kind
        if kind is Kind.SKIP:
            return
        if kind is Kind.OPAQUE:
            self._opaque(entry)
            return
        if not entry.name:  # the root directory itself
            self._dirs[""] = _meta_of(member)
            return
        parent_fd = self._dir_fd(entry.parent, entry)
        if kind is Kind.WHITEOUT:
            self._whiteout(parent_fd, entry, member)
            return
        if kind in (Kind.CHAR, Kind.BLOCK) and not may_create_devices():
            raise unsafe(entry.raw, "device files are only created by root")
        if self._rootfs:
            self._remember(entry.path)
        meta = _meta_of(member)
        # Create first and make room only on EEXIST: one syscall fewer per entry, and
        # O_EXCL/mkdir/symlink/link never follow a symlink that is in the way.
        try:
            self._create(parent_fd, entry, member, meta, read)
        except FileExistsError:
            if self._make_room(parent_fd, entry, keep_dir=kind is Kind.DIR):
                self._dirs[entry.path] = meta  # a directory over a directory: merged
                return
            self._create(parent_fd, entry, member, meta, read)

    def _create(
        self, parent_fd: int, entry: Entry, member: tarfile.TarInfo, meta: _Meta, read: ReadFn
    ) -> None:
        kind = entry.kind
        if kind is Kind.DIR:
            os.mkdir(entry.name, _DIR_CREATE_MODE, dir_fd=parent_fd)
            self._dirs[entry.path] = meta
        elif kind is Kind.FILE:
            self._file(parent_fd, entry, member, meta, read)
        elif kind is Kind.HARDLINK:
            self._hardlink(parent_fd, entry)
        else:
            self._special(parent_fd, entry, member, meta)

    def _file(
        self, parent_fd: int, entry: Entry, member: tarfile.TarInfo, meta: _Meta, read: ReadFn
    ) -> None:
        fd = os.open(entry.name, _NEW_FILE, _FILE_CREATE_MODE, dir_fd=parent_fd)
        try:
            if member.sparse is not None:
                _copy_sparse(fd, entry, member, read)
            else:
                _copy(fd, entry, member.size, read)
            if self._same_owner:
                os.fchown(fd, meta.uid, meta.gid)
            os.fchmod(fd, meta.mode)
            _set_xattrs(fd, meta.xattrs, entry)
            os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, parent_fd: int, entry: Entry) -> None:
        target_parent, _, target_name = entry.link.rpartition("/")
        target_fd = self._dir_fd(target_parent, entry)
        st = hostfs.lstat_or_none(target_fd, target_name)
        if st is None:
            raise malformed(entry.raw, f"hard link target {entry.link!r} does not exist")
        if stat.S_ISDIR(st.st_mode):
            raise malformed(entry.raw, f"hard link target {entry.link!r} is a directory")
        # follow_symlinks=False: a link to a symlink links the symlink itself, never its target
        os.link(
            target_name,
            entry.name,
            src_dir_fd=target_fd,
            dst_dir_fd=parent_fd,
            follow_symlinks=False,
        )

    def _special(self, parent_fd: int, entry: Entry, member: tarfile.TarInfo, meta: _Meta) -> None:
        name = entry.name
        if entry.kind is Kind.SYMLINK:
            os.symlink(member.linkname, name, dir_fd=parent_fd)
        elif entry.kind is Kind.FIFO:
            os.mkfifo(name, _FILE_CREATE_MODE, dir_fd=parent_fd)
        else:
            kind_bits = stat.S_IFCHR if entry.kind is Kind.CHAR else stat.S_IFBLK
            dev = os.makedev(member.devmajor, member.devminor)
            os.mknod(name, kind_bits | _FILE_CREATE_MODE, dev, dir_fd=parent_fd)
        self._apply_meta(parent_fd, name, entry, meta, is_link=entry.kind is Kind.SYMLINK)

    def _apply_meta(
        self, parent_fd: int, name: str, entry: Entry, meta: _Meta, *, is_link: bool = False
    ) -> None:
        if self._same_owner:
            hostfs.chown_at(parent_fd, name, meta.uid, meta.gid)
        if not is_link:
            hostfs.chmod_at(parent_fd, name, meta.mode)
        if meta.xattrs:
            with hostfs.opath(parent_fd, name) as target:
                _set_xattrs(target, meta.xattrs, entry)
        hostfs.utime_at(parent_fd, name, meta.mtime_ns, meta.mtime_ns)

    # -- whiteouts ---------------------------------------------------------------------
    def _whiteout(self, parent_fd: int, entry: Entry, member: tarfile.TarInfo) -> None:
        if self._rootfs:
            st = hostfs.lstat_or_none(parent_fd, entry.name)
            if st is not None:
                self._remove(parent_fd, entry.name, entry.path, st)
            self._layer_paths.discard(entry.path)
            return
        if self._format.whiteouts is WhiteoutStyle.WH_FILE:
            wh_name = whiteout_file_name(entry.name)
            st = hostfs.lstat_or_none(parent_fd, wh_name)
            if st is not None:
                self._remove(parent_fd, wh_name, entry.path, st)
            fd = os.open(wh_name, _NEW_FILE, _FILE_CREATE_MODE, dir_fd=parent_fd)
            os.close(fd)
            return
        self._make_room(parent_fd, entry, keep_dir=False)
        os.mknod(entry.name, stat.S_IFCHR, 0, dir_fd=parent_fd)

    def _opaque(self, entry: Entry) -> None:
        fd = self._dir_fd(entry.parent, entry)
        if self._rootfs:
            self._remember(entry.parent)
            self._clear_unpacked(fd, entry.parent)
        else:
            hostfs.setxattr_at(fd, ".", self._format.opaque_xattr, OPAQUE_VALUE)

    def _clear_unpacked(self, dir_fd: int, path: str) -> None:
        """Remove every child of *path* that this layer did not put there (recursively)."""
        for name in os.listdir(_readable(dir_fd)):
            child = f"{path}/{name}" if path else name
            st = hostfs.lstat_at(dir_fd, name)
            if child not in self._layer_paths:
                self._remove(dir_fd, name, child, st)
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(name, hostfs.O_PATH_DIR, dir_fd=dir_fd)
                try:
                    self._clear_unpacked(sub, child)
                finally:
                    os.close(sub)

    # -- the end -----------------------------------------------------------------------
    def finish(self) -> None:
        """Apply directory metadata, deepest first, once all content is in place."""
        for path in sorted(self._dirs, reverse=True):
            meta = self._dirs[path]
            parent, _, name = path.rpartition("/")
            entry = Entry(path or ".", Kind.DIR, parent, name)
            parent_fd = self._dir_fd(parent, entry)
            self._apply_meta(parent_fd, name or ".", entry, meta)
            self._close_retired()
        self._dirs.clear()


def _readable(dir_fd: int) -> str:
    return f"/proc/self/fd/{dir_fd}"


def _set_xattrs(target: int | str, xattrs: dict[str, bytes], entry: Entry) -> None:
    """Set xattrs on *target* (fd or path); one the filesystem or user cannot hold is logged."""
    for attr, value in xattrs.items():
        try:
            os.setxattr(target, attr, value)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            log.warning("layer entry %r: cannot set xattr %s: %s", entry.raw, attr, exc.strerror)


def _copy(fd: int, entry: Entry, size: int, read: ReadFn) -> None:
    left = size
    while left:
        data = read(min(left, CHUNK))
        if not data:
            raise malformed(entry.raw, "data ends early (truncated layer)")
        _write_all(fd, data)
        left -= len(data)


def _copy_sparse(fd: int, entry: Entry, member: tarfile.TarInfo, read: ReadFn) -> None:
    """Write the data blocks of a sparse member at their offsets; the gaps stay holes."""
    end = 0
    sparse = cast(list[tuple[int, int]], member.sparse or [])
    for offset, length in sparse:
        if length <= 0:
            continue
        if offset < end or offset + length > member.size:
            raise malformed(entry.raw, "sparse map out of order or beyond the file size")
        left, pos = length, offset
        while left:
            data = read(min(left, CHUNK))
            if not data:
                raise malformed(entry.raw, "data ends early (truncated layer)")
            _write_all(fd, data, pos)
            pos += len(data)
            left -= len(data)
        end = offset + length
    os.ftruncate(fd, member.size)
