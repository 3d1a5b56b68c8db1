"""Copy-up: making a lower object exist in the upper layer before it is changed.

Every copy is built under a temporary name in the work directory (``WORK/work``) and renamed
into place with ``RENAME_NOREPLACE``, so a crash or an error never leaves a half-copied object
visible in the merged view; leftovers in the work directory are removed when a stack is
assembled, as the kernel does. Missing parent directories are copied first, with their own
metadata, and each parent's times are put back after a child was renamed into it. Every copy
records its origin (the kernel's ``origin`` xattr, a file handle of the lower object) and
flags its upper parent ``impure``, as the kernel does; a later assembly gives the copy its
lower object's inode number again (:mod:`layerfs.namei`).

A change of metadata alone (chmod, chown, utimes, setxattr) of a lower regular file copies
only its metadata when the stack has ``metacopy`` on: the upper file is a sparse file of the
same size with an empty ``*.overlay.metacopy`` xattr (the kernel's ``metacopy=on`` format),
and its data stays below until the file is first opened for writing. That data copy happens
in place and the xattr is removed last, so an interruption leaves a file that still reads the
lower data; a failure gives the copied blocks back.

Data is copied without the stack's lock: the node is claimed first (:meth:`Overlay.claim`),
so nothing changes it meanwhile, while lookups and reads of other objects go on.

A directory that merges lower content is copied whole (:func:`copy_up_tree`) when it is
renamed: layerfs writes no ``redirect`` xattrs, so the renamed directory must hold everything.

``FAULT_HOOK`` lets tests interrupt a copy-up at each named step.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerfs import hostfs, namei
from layerfs.errors import oserror
from layerfs.hostfs import RENAME_EXCHANGE, RENAME_NOREPLACE
from layerfs.node import DIR, ONLY_UPPER, REG, UPPER, Alias, Node
from layerfs.whiteout import IMPURE_VALUE, METACOPY_XATTRS, Origin, encode_origin, is_private_xattr

# Dropped by the kernel on every write to a file; a copy-up must not lose it.
CAPABILITY_XATTR = "security.capability"

if TYPE_CHECKING:
    from layerfs.fs import Overlay
    from layerfs.layer import Layer, LayerFile

FAULT_HOOK: Callable[[str], None] | None = None


def _fault(step: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(step)


def is_regular(node: Node) -> bool:
    return node.kind == REG


def copy_up(fs: Overlay, node: Node, alias: Alias | None = None, *, data: bool = True) -> None:
    """Make *node* exist in the upper under *alias* (default: its first name).

    With ``data=False`` a lower regular file may be copied metadata-only (``metacopy``).
    Raises EROFS on a read-only stack, ENOENT if the name went away while this waited for
    another copy of the same object.
    """
    fs.check_writable()
    if node is fs.root:
        return
    fs.wait_idle(node)
    alias = alias or (node.aliases[0] if node.aliases else None)
    if alias is None or alias not in node.aliases:
        raise oserror(errno.ENOENT)
    if node.in_upper:
        if not alias.in_upper:
            _link_up(fs, node, alias)
        if data and node.metacopy:
            complete_metacopy(fs, node)
        return
    assert alias.parent is not None
    copy_up(fs, alias.parent)
    if node.is_dir:
        _copy_up_dir(fs, node, alias)
        return
    meta_only = not data and fs.options.metacopy and node.kind == REG
    lower_pos = node.layers[0]
    lower_st = _copy_up_nondir(fs, node, alias, meta_only)
    if lower_st.st_nlink > 1:
        namei.discover_aliases(fs, lower_pos, lower_st)
    link_up_all(fs, node)


def prepare_write(fs: Overlay, node: Node, truncate_to: int | None) -> None:
    """Copy *node* up for writing, copying no more data than will survive a truncate."""
    if node.kind != REG:
        copy_up(fs, node)
        return
    if truncate_to is None and not node.metacopy:
        copy_up(fs, node, data=True)
        return
    copy_up(fs, node, data=False)  # a metacopy file stays one, for now
    if node.metacopy:  # then its data, no more of it than survives the truncate
        complete_metacopy(fs, node, upto=truncate_to, keep_times=False)


def link_up_all(fs: Overlay, node: Node) -> None:
    """Give every known name of a copied-up hard-linked object its link in the upper.

    This keeps lower hard links linked after copy-up, as overlayfs does with ``index=on``;
    names of the object found later are linked when first looked up.
    """
    for other in list(node.aliases):
        if not other.in_upper:
            _link_up(fs, node, other)


def _link_up(fs: Overlay, node: Node, alias: Alias) -> None:
    """Give another name of an already copied-up hard-linked object its upper link."""
    assert alias.parent is not None
    source = node.upper_alias()
    assert source is not None and source.parent is not None
    copy_up(fs, alias.parent)
    dst_fd = fs.upper_dir(alias.parent)
    with _ParentTimesKept(fs, dst_fd):
        fs.upper.link(fs.upper_dir(source.parent), source.name, dst_fd, alias.name)
    alias.in_upper = True
    # a metacopy object's data is still below: the new name's entry must say where, or a
    # fresh lookup of it (after the node was forgotten) would read the sparse upper file
    _set_upper_entry(alias, node.kind, node.layers[1] if node.metacopy else None)


def _start(fs: Overlay, node: Node, alias: Alias) -> tuple[Layer, Any, os.stat_result, int, str]:
    """What a copy of *node* under *alias* starts from: its top-most lower object (layer,
    parent handle, stat), the upper parent's descriptor, and a fresh work-directory name."""
    assert alias.parent is not None
    pos = node.layers[0]
    layer, lower = fs.layers[pos], fs.dir(alias.parent, pos)
    st = _lower_stat(layer, lower, alias.name)
    return layer, lower, st, fs.upper_dir(alias.parent), fs.tmpname()


def _copy_up_dir(fs: Overlay, node: Node, alias: Alias) -> None:
    layer, lower, st, upper_fd, tmp = _start(fs, node, alias)
    fs.upper.mkdir(fs.work_fd, tmp)
    try:
        _fault("dir-created")
        _install(fs, (layer, lower, alias.name), st, tmp, upper_fd, "dir-before-rename")
    except BaseException:
        fs.upper.remove_tree(fs.work_fd, tmp)
        raise
    node.layers = (UPPER, *node.layers)
    node.version += 1
    alias.in_upper = True
    _set_upper_entry(alias, DIR)
    fs.inodes.register_copy(node, os.stat(alias.name, dir_fd=upper_fd, follow_symlinks=False))


def _copy_up_nondir(fs: Overlay, node: Node, alias: Alias, meta_only: bool) -> os.stat_result:
    lower_pos = node.layers[0]
    layer, lower, st, upper_fd, tmp = _start(fs, node, alias)
    data = fs.data_location(node)  # a lower metacopy file's data is further down
    with fs.claim(node):
        try:
            _create_copy(fs, data, tmp, st, meta_only)
            _install(fs, (layer, lower, alias.name), st, tmp, upper_fd, "file-before-rename")
        except BaseException:
            fs.upper.unlink_quiet(fs.work_fd, tmp)
            raise
    if meta_only:
        if node.data is None:
            node.data = (lower_pos, layer.open_dir(lower, "."), alias.name)
        data_pos = node.data[0]
        node.layers = (UPPER, data_pos)
    else:
        fs.release(node)
        node.layers = ONLY_UPPER
    node.version += 1
    alias.in_upper = True
    _set_upper_entry(alias, node.kind, data_pos if meta_only else None)
    fs.inodes.register_copy(node, os.stat(alias.name, dir_fd=upper_fd, follow_symlinks=False))
    return st


def _install(
    fs: Overlay,
    source: tuple[Layer, Any, str],
    st: os.stat_result,
    tmp: str,
    upper_fd: int,
    step: str,
) -> None:
    """Give the copy *tmp* its source's metadata and origin, then rename it into place in
    the upper (``RENAME_NOREPLACE``: never over something), its parent's times kept."""
    layer, parent, name = source
    copy_metadata(fs, layer, parent, name, st, fs.work_fd, tmp)
    _fault(step)
    with _ParentTimesKept(fs, upper_fd):
        fs.upper.rename(fs.work_fd, tmp, upper_fd, name, RENAME_NOREPLACE)
        mark_impure(fs, upper_fd)


def _create_copy(
    fs: Overlay,
    data: tuple[Layer, Any, str],
    tmp: str,
    st: os.stat_result,
    meta_only: bool,
) -> None:
    """The new object under *tmp* in the work directory, with the content of *data* (layer,
    parent handle, name) unless *meta_only*; data is copied without the stack's lock (the
    caller has claimed the node)."""
    layer, lower, name = data
    work = fs.work_fd
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFLNK:
        fs.upper.symlink(work, tmp, layer.readlink(lower, name))
        return
    if kind != REG:
        fs.upper.mknod(work, tmp, st.st_mode, st.st_rdev)
        return
    dst = fs.upper.create(work, tmp)
    try:
        _fault("file-created")
        if meta_only:
            os.ftruncate(dst, st.st_size)
            fs.upper.fd_setxattr(dst, fs.options.upper_format.metacopy_xattr, b"")
            return
        source = layer.open_file(lower, name)
        try:
            with fs.unlocked():
                _fault("file-data-copying")
                fs.upper.copy_data(source, dst, st.st_size)
        finally:
            source.close()
        _fault("file-data-copied")
    finally:
        os.close(dst)


def copy_metadata(
    fs: Overlay, layer: Layer, parent: Any, name: str, st: os.stat_result, dst_fd: int, dst: str
) -> None:
    """The one metadata copier: xattrs (not the stack's own), owner, mode and times of lower
    object *name* onto *dst*, then the origin record."""
    fs.upper.set_metadata(dst_fd, dst, st, _public_xattrs(layer, parent, name))
    set_origin(fs, layer, parent, name, dst_fd, dst)


def set_origin(fs: Overlay, layer: Layer, parent: Any, name: str, dst_fd: int, dst: str) -> None:
    """Record on the copy *dst* which lower object it came from, as the kernel does.

    The kernel's ``origin`` format, so a kernel mount of the upper reads it too; layerfs uses
    it to give the copy its lower object's number again in a later assembly. An unprivileged
    upper cannot put ``user.*`` xattrs on symlinks and devices: those go without, as in the
    kernel.
    """
    attr = fs.options.upper_format.origin_xattr
    try:
        fs.upper.setxattr(dst_fd, dst, attr, origin_value(fs, layer, parent, name))
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP):
            raise


def origin_value(fs: Overlay, layer: Layer, parent: Any, name: str) -> bytes:
    """The ``origin`` value for a copy of lower object *name* (kernel format; empty where the
    layer cannot name its objects by handle: "copied up, origin unknown")."""
    handle = layer.file_handle(parent, name)
    st = layer.lstat(parent, name)
    if handle is None or st is None:
        return encode_origin(None)
    uuid = fs.inodes.fs_uuids.get(st.st_dev, bytes(16))
    return encode_origin(Origin(handle[0], handle[1], uuid))


def mark_impure(fs: Overlay, upper_dirfd: int) -> None:
    """Flag an upper directory as holding copied-up objects, as the kernel does (its readdir
    then reports their origin's inode numbers)."""
    upper_layer = fs.layers[UPPER]
    attr = fs.options.upper_format.impure_xattr
    if upper_layer.dir_getxattr(upper_dirfd, attr) != IMPURE_VALUE:
        fs.upper.fd_setxattr(upper_dirfd, attr, IMPURE_VALUE)


def complete_metacopy(
    fs: Overlay, node: Node, upto: int | None = None, *, keep_times: bool = True
) -> None:
    """Copy a metacopy file's data into its upper file, then drop the metacopy xattr.

    *upto* limits the copy (a truncate to that size follows); 0 copies nothing. Without
    *keep_times* the file keeps the times the data copy gave it: what the kernel does when an
    open for writing completes a metacopy file (it puts them back only after a full copy-up).
    """
    alias = node.upper_alias()
    assert alias is not None and alias.parent is not None and node.data is not None
    upper_fd = fs.upper_dir(alias.parent)
    st = os.stat(alias.name, dir_fd=upper_fd, follow_symlinks=False)
    size = st.st_size if upto is None else min(upto, st.st_size)
    if size:
        with fs.claim(node):
            _copy_metacopy_data(fs, node, upper_fd, alias.name, size, st)
        if keep_times:
            fs.upper.utimes(upper_fd, alias.name, st.st_atime_ns, st.st_mtime_ns)
    for attr in METACOPY_XATTRS:
        try:
            fs.upper.removexattr(upper_fd, alias.name, attr)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    fs.release(node)
    node.layers = ONLY_UPPER
    node.version += 1
    if alias.parent.index is not None and alias.name in alias.parent.index:
        alias.parent.index.put(alias.name, ((UPPER, node.kind),))


def _copy_metacopy_data(
    fs: Overlay, node: Node, upper_fd: int, name: str, size: int, st: os.stat_result
) -> None:
    """Copy in place, without the lock; a failure (ENOSPC) punches the copy back out, so the
    upper is not left full (the metacopy xattr still stands: the lower data is what shows).

    Writing the data makes the kernel drop the file's ``security.capability``; it is put back,
    as kernel overlayfs does when it completes a metacopy file.
    """
    layer, parent, data_name = fs.data_location(node)
    dst = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=upper_fd)
    try:
        capability = hostfs.fd_getxattr(dst, CAPABILITY_XATTR)
        source: LayerFile = layer.open_file(parent, data_name)
        try:
            with fs.unlocked():
                fs.upper.copy_data(source, dst, size)
            if capability is not None:
                fs.upper.fd_setxattr(dst, CAPABILITY_XATTR, capability)
            _fault("metacopy-data-copied")
        except BaseException:
            with contextlib.suppress(OSError):  # the original error is the one to report
                fs.upper.punch(dst, st)
            raise
        finally:
            source.close()
    finally:
        os.close(dst)


def _set_upper_entry(alias: Alias, kind: int, data_pos: int | None = None) -> None:
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


def _lower_stat(layer: Layer, parent: Any, name: str) -> os.stat_result:
    st = layer.lstat(parent, name)
    if st is None:
        raise oserror(errno.ENOENT, name)
    return st


class _ParentTimesKept:
    """Put a directory's atime/mtime back after an entry was added to it by a copy-up."""

    def __init__(self, fs: Overlay, dirfd: int) -> None:
        self._fs = fs
        self._dirfd = dirfd
        self._st: os.stat_result | None = None

    def __enter__(self) -> None:
        self._st = os.stat(self._dirfd)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and self._st is not None:
            self._fs.upper.fd_utimes(self._dirfd, self._st.st_atime_ns, self._st.st_mtime_ns)


# -- whole directories ----------------------------------------------------------------------
def copy_up_tree(fs: Overlay, node: Node) -> None:
    """Replace a directory that merges lower content by a complete, opaque upper copy.

    Built in the work directory and swapped into place in one rename. The directory is
    claimed for the whole copy: nothing below it changes meanwhile, and the file data is
    copied without the lock.
    """
    alias = node.aliases[0]
    assert alias.parent is not None
    copy_up(fs, alias.parent)
    with fs.claim(node):
        tmp = fs.tmpname()
        tree = _TreeCopy(fs)
        try:
            tree.copy_dir(node, fs.work_fd, tmp)
            tree.copy_data()
            tree.finish()
            fs.upper.setxattr(fs.work_fd, tmp, fs.options.upper_format.opaque_xattr, b"y")
            upper_fd = fs.upper_dir(alias.parent)
            flags = RENAME_EXCHANGE if alias.in_upper else RENAME_NOREPLACE
            fs.upper.rename(fs.work_fd, tmp, upper_fd, alias.name, flags)
        except BaseException:
            fs.upper.remove_tree(fs.work_fd, tmp)
            raise
        finally:
            tree.close()
        fs.upper.remove_tree(fs.work_fd, tmp)  # what the exchange moved out, if anything
    _rehome(fs, node, alias)
    node.opaque = True
    parent_index = fs.index(alias.parent)
    if alias.name in parent_index:
        parent_index.put(alias.name, ((UPPER, DIR),))


class _TreeCopy:
    """One whole-directory copy: the tree is laid out under the lock, the data copied
    without it, then every object gets its metadata (after its data: writing moves times)."""

    def __init__(self, fs: Overlay) -> None:
        self.fs = fs
        self.fds: list[int] = []
        self.data: list[tuple[Node, int, str, os.stat_result]] = []
        self.metadata: list[tuple[Node, int, str]] = []

    def copy_dir(self, node: Node, dst_fd: int, dst_name: str) -> None:
        fs = self.fs
        fs.upper.mkdir(dst_fd, dst_name)
        child_fd = os.open(dst_name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dst_fd)
        self.fds.append(child_fd)
        names = list(fs.index(node).names())
        for name in names:
            child = namei.lookup(fs, node, name)
            if child.is_dir:
                self.copy_dir(child, child_fd, name)
            else:
                self.copy_leaf(child, child_fd, name)
        if names:
            mark_impure(fs, child_fd)
        self.metadata.append((node, dst_fd, dst_name))

    def copy_leaf(self, node: Node, dst_fd: int, name: str) -> None:
        """An object that is (or, as a lower hard link, becomes) an upper object is linked
        into the tree, so links to names outside the directory survive the rename; a lower
        object with one name is copied."""
        fs = self.fs
        layer, parent, src_name = fs.location(node)
        st = _lower_stat(layer, parent, src_name)
        if node.in_upper or st.st_nlink > 1:
            copy_up(fs, node, data=True)
            src_fd, upper_name = fs.upper_location(node)
            fs.upper.link(src_fd, upper_name, dst_fd, name)
            return
        kind = stat.S_IFMT(st.st_mode)
        if kind == REG:
            os.close(fs.upper.create(dst_fd, name))
            self.data.append((node, dst_fd, name, st))
        elif kind == stat.S_IFLNK:
            fs.upper.symlink(dst_fd, name, layer.readlink(parent, src_name))
        else:
            fs.upper.mknod(dst_fd, name, st.st_mode, st.st_rdev)
        self.metadata.append((node, dst_fd, name))

    def copy_data(self) -> None:
        fs = self.fs
        opened: list[tuple[LayerFile, int, os.stat_result]] = []
        try:
            for node, dst_fd, name, st in self.data:
                layer, parent, src_name = fs.data_location(node)
                source = layer.open_file(parent, src_name)
                dst = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_fd)
                opened.append((source, dst, st))
            with fs.unlocked():
                for source, dst, st in opened:
                    fs.upper.copy_data(source, dst, st.st_size)
        finally:
            for source, dst, _ in opened:
                source.close()
                os.close(dst)

    def finish(self) -> None:
        """Metadata and origin of every copied object, children before their directory."""
        fs = self.fs
        for node, dst_fd, dst in self.metadata:
            layer, parent, name = fs.location(node)
            st = _lower_stat(layer, parent, name)
            if node.in_upper:  # a merged directory: its upper object's origin is the one
                fs.upper.set_metadata(dst_fd, dst, st, _public_xattrs(layer, parent, name))
                value = namei.origin_value(fs, parent, name)
                if value is not None:
                    fs.upper.setxattr(dst_fd, dst, fs.options.upper_format.origin_xattr, value)
            else:
                copy_metadata(fs, layer, parent, name, st, dst_fd, dst)
            fs.inodes.register_copy(node, os.stat(dst, dir_fd=dst_fd, follow_symlinks=False))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _public_xattrs(layer: Layer, parent: Any, name: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for attr in layer.listxattr(parent, name):
        if not is_private_xattr(attr):
            value = layer.getxattr(parent, name, attr)
            if value is not None:
                found[attr] = value
    return found


def _rehome(fs: Overlay, node: Node, alias: Alias) -> None:
    """After a whole-tree copy: the nodes below live in the upper only, under *alias*."""
    fs.release(node)
    node.layers = ONLY_UPPER
    node.version += 1
    alias.in_upper = True
    if node.is_dir:
        node.index = None
        for name, child in node.children.items():
            child_alias = child.alias_at(node, name)
            assert child_alias is not None
            _rehome(fs, child, child_alias)
