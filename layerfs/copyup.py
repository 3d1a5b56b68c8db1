"""Copy-up: making a lower object exist in the upper layer before it is changed.

Every copy is built under a temporary name in the work directory (``WORK/work``) and renamed
into place with ``RENAME_NOREPLACE``, so a crash or an error never leaves a half-copied object
visible in the merged view; leftovers in the work directory are removed when a stack is
assembled, as the kernel does. Data moves with ``copy_file_range`` (``sendfile`` as the
fallback) and is fsync'ed before the rename unless the stack is ``volatile``. Missing parent
directories are copied first, with their own metadata, and each parent's timestamps are put
back after a child was renamed into it.

A change of metadata alone (chmod, chown, utimes, setxattr) of a lower regular file copies
only its metadata (``metacopy``): the upper file is a sparse file of the same size carrying an
empty ``*.overlay.metacopy`` xattr — the kernel's ``metacopy=on`` format — and its data stays in
the lower until the file is first opened for writing. The data copy then happens in place and
the xattr is removed last, so a crash in between leaves a file that still reads the lower data.

``FAULT_HOOK`` lets tests interrupt a copy-up at each named step.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from layerfs import hostfs
from layerfs.errors import oserror
from layerfs.node import DIR, ONLY_UPPER, REG, UPPER, Alias, Node

if TYPE_CHECKING:
    from layerfs.core import StackCore

FAULT_HOOK: Callable[[str], None] | None = None


def _fault(step: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(step)


def copy_up(core: StackCore, node: Node, alias: Alias | None = None, *, data: bool = True) -> None:
    """Make *node* exist in the upper under *alias* (default: its first name).

    With ``data=False`` a lower regular file may be copied metadata-only. Raises EROFS on a
    read-only stack.
    """
    core.check_writable()
    if node is core.root:
        return
    alias = alias or node.aliases[0]
    if node.in_upper:
        if not alias.in_upper:
            _link_up(core, node, alias)
        if data and node.metacopy:
            complete_metacopy(core, node)
        return
    assert alias.parent is not None
    copy_up(core, alias.parent)
    if node.is_dir:
        _copy_up_dir(core, node, alias)
        return
    meta_only = not data and core.options.metacopy and node.kind == REG
    lower_pos = node.layers[0]
    lower_st = _copy_up_nondir(core, node, alias, meta_only)
    if lower_st.st_nlink > 1:
        _discover_aliases(core, lower_pos, lower_st)
    link_up_all(core, node)


def _discover_aliases(core: StackCore, pos: int, lower_st: os.stat_result) -> None:
    """Find the other visible names of a hard-linked lower file, so all get linked up."""
    for path in core.lower_hardlinks(pos, lower_st):
        try:
            core.resolve_quiet(path)  # a visible name of the same object joins node.aliases
        except OSError:
            continue


def link_up_all(core: StackCore, node: Node) -> None:
    """Give every known name of a copied-up hard-linked object its link in the upper.

    This keeps lower hard links linked after copy-up, as overlayfs does with ``index=on``;
    names of the object found later are linked when first looked up.
    """
    for other in list(node.aliases):
        if not other.in_upper:
            _link_up(core, node, other)


def _link_up(core: StackCore, node: Node, alias: Alias) -> None:
    """Give another name of an already copied-up hard-linked object its upper link."""
    assert alias.parent is not None
    source = node.upper_alias()
    assert source is not None and source.parent is not None
    copy_up(core, alias.parent)
    src_fd = core.dirfd(source.parent, UPPER)
    dst_fd = core.dirfd(alias.parent, UPPER)
    with _parent_times_kept(dst_fd):
        os.link(
            source.name, alias.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False
        )
    alias.in_upper = True
    # a metacopy object's data is still below: the new name's entry must say where, or a
    # fresh lookup of it (after the node was forgotten) would read the sparse upper file
    _set_upper_entry(core, alias, node.kind, node.layers[1] if node.metacopy else None)


def _copy_up_dir(core: StackCore, node: Node, alias: Alias) -> None:
    assert alias.parent is not None
    lower_fd = core.dirfd(alias.parent, node.layers[0])
    st = hostfs.lstat_at(lower_fd, alias.name)
    upper_fd = core.dirfd(alias.parent, UPPER)
    tmp = core.tmpname()
    os.mkdir(tmp, 0o700, dir_fd=core.work_fd)
    try:
        _fault("dir-created")
        _copy_metadata(lower_fd, alias.name, core.work_fd, tmp, st)
        set_origin(core, lower_fd, alias.name, core.work_fd, tmp)
        _fault("dir-before-rename")
        with _parent_times_kept(upper_fd):
            hostfs.rename_at(core.work_fd, tmp, upper_fd, alias.name, hostfs.RENAME_NOREPLACE)
            core.mark_impure(upper_fd)
    except BaseException:
        hostfs.remove_tree(core.work_fd, tmp)
        raise
    hostfs.utime_at(upper_fd, alias.name, st.st_atime_ns, st.st_mtime_ns)
    node.layers = (UPPER, *node.layers)
    node.version += 1
    alias.in_upper = True
    _set_upper_entry(core, alias, DIR)
    core.register_upper(node, hostfs.lstat_at(upper_fd, alias.name))


def _copy_up_nondir(core: StackCore, node: Node, alias: Alias, meta_only: bool) -> os.stat_result:
    assert alias.parent is not None
    lower_pos = node.layers[0]
    lower_fd = core.dirfd(alias.parent, lower_pos)
    st = hostfs.lstat_at(lower_fd, alias.name)
    upper_fd = core.dirfd(alias.parent, UPPER)
    tmp = core.tmpname()
    try:
        _create_copy(core, lower_fd, alias.name, tmp, st, meta_only)
        _copy_metadata(lower_fd, alias.name, core.work_fd, tmp, st)
        set_origin(core, lower_fd, alias.name, core.work_fd, tmp)
        _fault("file-before-rename")
        with _parent_times_kept(upper_fd):
            hostfs.rename_at(core.work_fd, tmp, upper_fd, alias.name, hostfs.RENAME_NOREPLACE)
            core.mark_impure(upper_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=core.work_fd)
        raise
    if meta_only:
        node.layers = (UPPER, lower_pos)
        node.data_dirfd = os.open(".", hostfs.O_PATH_DIR, dir_fd=lower_fd)
        node.data_name = alias.name
    else:
        node.layers = ONLY_UPPER
    node.version += 1
    alias.in_upper = True
    _set_upper_entry(core, alias, node.kind, lower_pos if meta_only else None)
    core.register_upper(node, hostfs.lstat_at(upper_fd, alias.name))
    return st


def _create_copy(
    core: StackCore, lower_fd: int, name: str, tmp: str, st: os.stat_result, meta_only: bool
) -> None:
    work = core.work_fd
    kind = stat.S_IFMT(st.st_mode)
    if kind == REG:
        dst = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=work,
        )
        try:
            _fault("file-created")
            if meta_only:
                os.ftruncate(dst, st.st_size)
                os.setxattr(f"/proc/self/fd/{dst}", core.options.upper_format.metacopy_xattr, b"")
            else:
                src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lower_fd)
                try:
                    hostfs.copy_data(src, dst, st.st_size)
                finally:
                    os.close(src)
                _fault("file-data-copied")
                if not core.options.volatile:
                    os.fsync(dst)
        finally:
            os.close(dst)
    elif kind == stat.S_IFLNK:
        os.symlink(os.readlink(name, dir_fd=lower_fd), tmp, dir_fd=work)
    else:
        os.mknod(tmp, st.st_mode, st.st_rdev, dir_fd=work)


def _copy_metadata(src_fd: int, src: str, dst_fd: int, dst: str, st: os.stat_result) -> None:
    """Owner, mode, xattrs and times, in the order that keeps each from undoing another."""
    hostfs.copy_xattrs(src_fd, src, dst_fd, dst)
    hostfs.chown_at(dst_fd, dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        hostfs.chmod_at(dst_fd, dst, st.st_mode)
    hostfs.utime_at(dst_fd, dst, st.st_atime_ns, st.st_mtime_ns)


def set_origin(core: StackCore, lower_fd: int, name: str, dst_fd: int, dst: str) -> None:
    """Record on the copy *dst* which lower object it came from, as the kernel does.

    The kernel's ``origin`` format, so a kernel mount of the upper reads it too; layerfs uses
    it to give the copy its lower object's inode number again in a later assembly. An
    unprivileged upper cannot put ``user.*`` xattrs on symlinks and devices: those go without,
    as in the kernel.
    """
    attr = core.options.upper_format.origin_xattr
    try:
        hostfs.setxattr_at(dst_fd, dst, attr, core.origin_value(lower_fd, name))
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP):
            raise


def complete_metacopy(
    core: StackCore, node: Node, upto: int | None = None, *, keep_times: bool = True
) -> None:
    """Copy a metacopy file's data into its upper file, then drop the metacopy xattr.

    *upto* limits the copy (a truncate to that size follows); 0 copies nothing. Without
    *keep_times* the file keeps the times the data copy gave it: what the kernel does when
    an open for writing completes a metacopy file (it puts the times back only after a full
    copy-up).
    """
    alias = node.upper_alias()
    assert alias is not None and alias.parent is not None and node.data_dirfd is not None
    upper_fd = core.dirfd(alias.parent, UPPER)
    st = hostfs.lstat_at(upper_fd, alias.name)
    size = st.st_size if upto is None else min(upto, st.st_size)
    if size:
        dst = os.open(alias.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=upper_fd)
        try:
            _copy_metacopy_data(core, node, dst, size)
        except BaseException:
            _punch_back(dst, st)
            raise
        finally:
            os.close(dst)
        if keep_times:
            hostfs.utime_at(upper_fd, alias.name, st.st_atime_ns, st.st_mtime_ns)
    for attr in core.metacopy_xattrs:
        try:
            hostfs.removexattr_at(upper_fd, alias.name, attr)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    os.close(node.data_dirfd)
    node.data_dirfd = None
    node.layers = ONLY_UPPER
    node.version += 1
    if alias.parent.index is not None and alias.name in alias.parent.index:
        alias.parent.index.put(alias.name, ((UPPER, node.kind),))


def _copy_metacopy_data(core: StackCore, node: Node, dst: int, size: int) -> None:
    assert node.data_dirfd is not None
    src = os.open(
        node.data_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=node.data_dirfd
    )
    try:
        hostfs.copy_data(src, dst, size)
    finally:
        os.close(src)
    _fault("metacopy-data-copied")
    if not core.options.volatile:
        os.fsync(dst)


def _punch_back(fd: int, st: os.stat_result) -> None:
    """Undo a failed in-place data copy: the file becomes the sparse metacopy file it was.

    Without this a copy that failed half-way (ENOSPC) would keep its blocks: the upper stays
    full, and a remount would not free them. The metacopy xattr was never removed, so the
    merged view reads the lower data throughout. Best effort: the original error is raised.
    """
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.ftruncate(fd, st.st_size)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _set_upper_entry(core: StackCore, alias: Alias, kind: int, data_pos: int | None = None) -> None:
    """Record in the parent's index that *alias* now has its object in the upper."""
    parent = alias.parent
    if parent is None or parent.index is None:
        return
    items = parent.index.get(alias.name)
    if items is None:
        return
    if kind == DIR:
        parent.index.put(alias.name, ((UPPER, DIR), *items))
    elif data_pos is not None:
        parent.index.put(alias.name, ((UPPER, kind), (data_pos, REG)))
    else:
        parent.index.put(alias.name, ((UPPER, kind),))


class _parent_times_kept:
    """Put a directory's atime/mtime back after an entry was added to it by a copy-up."""

    def __init__(self, dirfd: int) -> None:
        self._dirfd = dirfd
        self._st: os.stat_result | None = None

    def __enter__(self) -> None:
        self._st = os.stat(self._dirfd)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and self._st is not None:
            try:
                os.utime(
                    f"/proc/self/fd/{self._dirfd}", ns=(self._st.st_atime_ns, self._st.st_mtime_ns)
                )
            except OSError as exc:
                raise oserror(exc.errno or errno.EIO) from exc
