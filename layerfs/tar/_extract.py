"""Writing checked tar entries into a directory without ever leaving it.

Every host operation starts from a directory descriptor opened with ``openat2(RESOLVE_BENEATH
| RESOLVE_NO_SYMLINKS)`` (:func:`layerfs.hostfs.open_beneath`) and then touches one name with
``O_NOFOLLOW`` / ``AT_SYMLINK_NOFOLLOW``. A symlink on the way to an entry is therefore never
walked through: it makes the entry unsafe, whether the layer created it or it was already in
the tree. An entry that names an existing object replaces it (unlink, or remove the whole
subtree for a directory replaced by a non-directory); a directory over a directory is merged.
Directory metadata is applied last, deepest first, so that later entries neither bump a
directory's mtime nor run into a read-only directory.

Whiteouts and opaque markers apply to the layers below only (OCI image-spec, layer.md): what
this layer itself adds stays, whatever the order of the entries. In LAYER mode they are
therefore written at the end, once every entry is in place; in ROOTFS mode they delete at
once, sparing what this layer has unpacked so far. A marker below a non-directory of this
layer has nothing to hide and does nothing.
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

from layerfs import hostfs, privilege
from layerfs.tar._entries import XATTR_PREFIXES, Entry, Kind, malformed, unsafe
from layerfs.tar._streams import CHUNK
from layerfs.whiteout import (
    OPAQUE_VALUE,
    UpperFormat,
    WhiteoutStyle,
    is_private_xattr,
    whiteout_file_name,
)

log = logging.getLogger(__name__)

_DIR_CREATE_MODE = 0o700  # until the entry's own mode is applied at the end
_IMPLICIT_DIR_MODE = 0o755  # a directory the layer needs but has no entry for (and its root)
_FILE_CREATE_MODE = 0o600
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

ReadFn = Callable[[int], bytes]


def may_create_devices() -> bool:
    """Device nodes are created only by root of the host (a layer must not hand anyone else a
    device, and uid 0 of a user namespace cannot make one). For anyone else they are left
    out, as docker's and containers/storage's unpacking leave them out in a user namespace:
    a container gets its devices from the runtime's ``/dev``, not from its image."""
    return privilege.is_host_root()


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
        mtime_ns=mtime_ns(member),
        xattrs=_xattrs_of(member),
    )


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, exact: from the PAX record's decimal digits where
    there is one (``tarfile`` gives a float, which is off by up to a microsecond, and by
    whole seconds' worth of rounding past 2^33 s), else the header's whole seconds."""
    text = member.pax_headers.get("mtime")
    if text is not None:
        sign = -1 if text.startswith("-") else 1
        seconds, _, fraction = text.lstrip("+-").partition(".")
        if seconds.isdigit() and (fraction.isdigit() or not fraction):
            return sign * (int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, "0")))
    return round(member.mtime * 1_000_000_000)


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
        self._markers: list[Entry] = []  # LAYER mode: whiteouts and opaque markers, for the end
        self._devices_left_out: list[str] = []

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
        fd = self._open_dir(path, entry, create=True, marker=False)
        assert fd is not None  # only markers are told "nothing to do here"
        return fd

    def _open_dir(self, path: str, entry: Entry, *, create: bool, marker: bool) -> int | None:
        """The descriptor of directory *path*; for a *marker*, None when there is nothing to do.

        A marker needs no directory below a non-directory of this layer (it hides nothing
        there), nor, without *create*, below a missing one. A symlink on the way that the layer
        did not make is always unsafe; one it made stops only ordinary entries.
        """
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        try:
            fd = hostfs.open_beneath(self._root, path) if path else os.dup(self._root)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise
            fd = self._walk_to_dir(path, entry, create=create, marker=marker)
            if fd is None:
                return None
        if len(self._fds) >= 64:
            self._forget_fds()
        self._fds[path] = fd
        return fd

    def _walk_to_dir(self, path: str, entry: Entry, *, create: bool, marker: bool) -> int | None:
        fd = os.dup(self._root)
        done: list[str] = []
        try:
            for part in path.split("/"):
                st = hostfs.lstat_or_none(fd, part)
                where = "/".join([*done, part])
                if st is None:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, _IMPLICIT_DIR_MODE, dir_fd=fd)
                    hostfs.chmod_at(fd, part, _IMPLICIT_DIR_MODE)  # whatever the umask
                elif not stat.S_ISDIR(st.st_mode):
                    if marker and (not stat.S_ISLNK(st.st_mode) or self._made_here(where)):
                        os.close(fd)
                        return None
                    if stat.S_ISLNK(st.st_mode):
                        raise unsafe(entry.raw, f"parent {where!r} is a symlink")
                    raise malformed(entry.raw, f"parent {where!r} is not a directory")
                nxt = os.open(part, hostfs.O_PATH_DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
                done.append(part)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _made_here(self, path: str) -> bool:
        """Whether this layer made *path* (in LAYER mode, everything in the tree)."""
        return not self._rootfs or path in self._layer_paths

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
        if kind in (Kind.WHITEOUT, Kind.OPAQUE):
            if not self._rootfs:
                self._markers.append(entry)  # lower layers only: written after every entry
            elif kind is Kind.WHITEOUT:
                self._delete_below(entry)
            else:
                self._clear_below(entry)
            return
        if not entry.name:  # the root directory itself
            self._dirs[""] = _meta_of(member)
            return
        parent_fd = self._dir_fd(entry.parent, entry)
        if kind in (Kind.CHAR, Kind.BLOCK) and not may_create_devices():
            self._devices_left_out.append(entry.path)
            return
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
                with privilege.owner_must_be_mapped(entry.path, meta.uid, meta.gid):
                    os.fchown(fd, meta.uid, meta.gid)
            os.fchmod(fd, meta.mode)
            _set_xattrs(fd, meta.xattrs, entry)
            os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, parent_fd: int, entry: Entry) -> None:
        target_parent, _, target_name = entry.link.rpartition("/")
        target_fd = self._open_dir(target_parent, entry, create=False, marker=False)
        st = None if target_fd is None else hostfs.lstat_or_none(target_fd, target_name)
        if target_fd is None or st is None:
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
            with privilege.owner_must_be_mapped(entry.path, meta.uid, meta.gid):
                hostfs.chown_at(parent_fd, name, meta.uid, meta.gid)
        if not is_link:
            hostfs.chmod_at(parent_fd, name, meta.mode)
        if meta.xattrs:
            with hostfs.opath(parent_fd, name) as target:
                _set_xattrs(target, meta.xattrs, entry)
        hostfs.utime_at(parent_fd, name, meta.mtime_ns, meta.mtime_ns)

    # -- whiteouts ---------------------------------------------------------------------
    def _delete_below(self, entry: Entry) -> None:
        """ROOTFS: delete what lower layers have at the whiteout's name; this layer's stays."""
        parent_fd = self._open_dir(entry.parent, entry, create=False, marker=True)
        if parent_fd is None:
            return
        st = hostfs.lstat_or_none(parent_fd, entry.name)
        if st is None:
            return
        if entry.path not in self._layer_paths:
            self._remove(parent_fd, entry.name, entry.path, st)
        elif stat.S_ISDIR(st.st_mode):  # made by this layer: only what was below it goes
            sub = os.open(entry.name, hostfs.O_PATH_DIR, dir_fd=parent_fd)
            try:
                self._clear_unpacked(sub, entry.path)
            finally:
                os.close(sub)

    def _clear_below(self, entry: Entry) -> None:
        """ROOTFS: an opaque marker removes what lower layers have in its directory."""
        fd = self._open_dir(entry.parent, entry, create=True, marker=True)
        if fd is not None:
            self._remember(entry.parent)
            self._clear_unpacked(fd, entry.parent)

    def _write_marker(self, entry: Entry) -> None:
        """LAYER: write a whiteout or opaque mark, now that every entry of the layer is in.

        A name this layer has is kept: a non-directory already hides what is below it, and a
        directory is made opaque so that it no longer merges with the one below.
        """
        fd = self._open_dir(entry.parent, entry, create=True, marker=True)
        if fd is None:
            return
        if entry.kind is Kind.OPAQUE:
            hostfs.setxattr_at(fd, ".", self._format.opaque_xattr, OPAQUE_VALUE)
            return
        st = hostfs.lstat_or_none(fd, entry.name)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                hostfs.setxattr_at(fd, entry.name, self._format.opaque_xattr, OPAQUE_VALUE)
            return
        if self._format.whiteouts is WhiteoutStyle.WH_FILE:
            wh_name = whiteout_file_name(entry.name)
            if hostfs.lstat_or_none(fd, wh_name) is None:
                os.close(os.open(wh_name, _NEW_FILE, _FILE_CREATE_MODE, dir_fd=fd))
            return
        hostfs.make_whiteout(fd, entry.name)

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
        """Write the LAYER-mode markers, then directory metadata, deepest first.

        In LAYER mode a root directory without an entry of its own gets mode 0755, as a fresh
        root file system has: the layer has nothing to say about it.
        """
        if self._devices_left_out:
            left_out = self._devices_left_out
            log.warning(
                "left out %d device node(s) (%s%s): only root of the host creates them",
                len(left_out),
                ", ".join(left_out[:3]),
                ", ..." if len(left_out) > 3 else "",
            )
        for entry in sorted(self._markers, key=_marker_order):
            self._write_marker(entry)
            self._close_retired()
        self._markers.clear()
        if not self._rootfs and "" not in self._dirs:
            hostfs.chmod_at(self._root, ".", _IMPLICIT_DIR_MODE)
        for path in sorted(self._dirs, reverse=True):
            meta = self._dirs[path]
            parent, _, name = path.rpartition("/")
            entry = Entry(path or ".", Kind.DIR, parent, name)
            parent_fd = self._dir_fd(parent, entry)
            self._apply_meta(parent_fd, name or ".", entry, meta)
            self._close_retired()
        self._dirs.clear()


def _marker_order(entry: Entry) -> tuple[bool, int]:
    """Opaque marks first (each makes its directory part of the layer, as in ROOTFS mode),
    then whiteouts, shallow paths first: a whiteout of ``a`` leaves nothing for the whiteouts
    below ``a`` to write (they would otherwise create a directory ``a`` the layer lacks)."""
    depth = entry.path.count("/") + 1
    return entry.kind is Kind.WHITEOUT, depth


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
