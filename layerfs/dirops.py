"""Namespace operations: creating, linking, removing and renaming names of the merged view.

Every change is made in the upper layer, in overlayfs's format: a name a lower layer has gets
a whiteout when it goes (atomically, with ``RENAME_WHITEOUT`` where an upper object is
replaced), a new object over a whiteout is built in the work directory and swapped in, a new
directory over a whiteout or in a merged parent is opaque, a directory moved into a merged
parent is marked opaque, and a directory that merges lower content is copied whole before it
is renamed (never ``EXDEV``). Each function checks everything it can before it changes
anything, and gives the errno the kernel's VFS gives, in its order.

The stack's lock is held by the caller. A function that must change an object another thread
is copying (or an object under it) first waits for that copy (:meth:`Overlay.settle`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from layerfs import acl, copyup, namei
from layerfs.errors import oserror
from layerfs.hostfs import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT
from layerfs.inode import getattr_, getxattr
from layerfs.node import DIR, LNK, ONLY_UPPER, REG, UPPER, Alias, Node
from layerfs.readdir import MergedIndex
from layerfs.whiteout import NAME_MAX, WHITEOUT_PREFIX, is_whiteout_stat

if TYPE_CHECKING:
    from layerfs.fs import Overlay

PATH_MAX = 4096  # bytes of a path argument or a symlink target, its terminating NUL included
Make = Callable[[int, str], None]


def check_name(name: str) -> None:
    """EINVAL for a name that is no name, ENAMETOOLONG past NAME_MAX; ``.wh.`` is reserved."""
    if not name or "/" in name or name in (".", ".."):
        raise oserror(errno.EINVAL, name)
    if len(os.fsencode(name)) > NAME_MAX:
        raise oserror(errno.ENAMETOOLONG, name)
    if name.startswith(WHITEOUT_PREFIX):
        raise oserror(errno.EINVAL, name)


def alias_at(node: Node, parent: Node, name: str) -> Alias:
    alias = node.alias_at(parent, name)
    if alias is None:
        raise oserror(errno.ENOENT, name)
    return alias


# -- creating -------------------------------------------------------------------------------
def create(
    fs: Overlay,
    parent: Node,
    name: str,
    mode: int,
    uid: int | None,
    gid: int | None,
    umask: int | None = None,
) -> Node:
    """A new regular file *name* in *parent* (EEXIST if the name is taken). *umask*, where
    the caller's umask is still to apply (see :mod:`layerfs.acl`)."""
    return _place_new(fs, parent, name, REG, mode, (uid, gid, umask), fs.upper.make_file)


def mkdir(
    fs: Overlay,
    parent: Node,
    name: str,
    mode: int,
    uid: int | None,
    gid: int | None,
    umask: int | None = None,
) -> Node:
    return _place_new(fs, parent, name, DIR, mode, (uid, gid, umask), fs.upper.mkdir)


def mknod(
    fs: Overlay,
    parent: Node,
    name: str,
    mode: int,
    rdev: int,
    uid: int | None,
    gid: int | None,
    umask: int | None = None,
) -> Node:
    kind = stat.S_IFMT(mode) or REG
    if kind in (DIR, LNK):
        raise oserror(errno.EINVAL, name)

    def make(dirfd: int, host_name: str) -> None:
        if kind == REG:
            fs.upper.make_file(dirfd, host_name)
        else:
            fs.upper.mknod(dirfd, host_name, kind | 0o600, rdev)

    return _place_new(fs, parent, name, kind, mode, (uid, gid, umask), make)


def symlink(
    fs: Overlay, parent: Node, name: str, target: str, uid: int | None, gid: int | None
) -> Node:
    if len(os.fsencode(target)) >= PATH_MAX:
        raise oserror(errno.ENAMETOOLONG, name)

    def make(dirfd: int, host_name: str) -> None:
        fs.upper.symlink(dirfd, host_name, target)

    return _place_new(fs, parent, name, LNK, 0o777, (uid, gid, None), make)


def link(fs: Overlay, node: Node, new_parent: Node, new_name: str) -> Node:
    """Give *node* another name (EEXIST before EPERM, as the VFS orders them)."""
    while not fs.settle(node, new_parent):
        pass
    if not node.aliases:
        raise oserror(errno.ENOENT, new_name)
    check_new_name(fs, new_parent, new_name)
    if node.is_dir:
        raise oserror(errno.EPERM, new_name)
    fs.check_writable()
    copyup.copy_up(fs, node, data=True)
    src_fd, src_name = fs.upper_location(node)

    def make(dirfd: int, host_name: str) -> None:
        fs.upper.link(src_fd, src_name, dirfd, host_name)

    _put_in_upper(fs, new_parent, new_name, node.kind, make, fixup=None)
    alias = Alias(new_parent, new_name, True)
    node.aliases.append(alias)
    new_parent.children[new_name] = node
    fs.inodes.register_copy(
        node, os.stat(new_name, dir_fd=fs.upper_dir(new_parent), follow_symlinks=False)
    )
    return node


def check_new_name(fs: Overlay, parent: Node, name: str) -> None:
    """EINVAL/ENAMETOOLONG, ENOTDIR, ENOENT (a removed parent), EEXIST for a name to create."""
    check_name(name)
    if not parent.is_dir:
        raise oserror(errno.ENOTDIR, name)
    if not parent.aliases:
        raise oserror(errno.ENOENT, name)
    try:
        namei.lookup(fs, parent, name)
    except FileNotFoundError:
        return
    raise oserror(errno.EEXIST, name)


def _place_new(
    fs: Overlay,
    parent: Node,
    name: str,
    kind: int,
    mode: int,
    creator: tuple[int | None, int | None, int | None],
    make: Make,
) -> Node:
    """*creator*: the owner's uid and gid (None: this process's) and the umask still to
    apply (None: applied already)."""
    while not fs.settle(parent):
        pass
    check_new_name(fs, parent, name)
    fs.check_writable()
    uid, gid, umask = creator
    new = acl.new_object(kind, mode, umask, _default_acl(fs, parent, umask))
    owner, mode = _new_owner(fs, parent, kind, new.mode, uid, gid)

    def fixup(dirfd: int, host_name: str, opaque: bool) -> None:
        fs.upper.chown(dirfd, host_name, *owner)
        if kind != LNK:
            fs.upper.chmod(dirfd, host_name, mode)
        for attr, value in new.xattrs.items():
            fs.upper.setxattr(dirfd, host_name, attr, value)
        if opaque:
            fs.upper.setxattr(dirfd, host_name, fs.options.upper_format.opaque_xattr, b"y")

    opaque = _put_in_upper(fs, parent, name, kind, make, fixup)
    st = os.stat(name, dir_fd=fs.upper_dir(parent), follow_symlinks=False)
    node = Node(fs.inodes.new(st), kind, ONLY_UPPER)
    node.opaque = opaque
    node.aliases.append(Alias(parent, name, True))
    if kind == DIR:
        node.index = MergedIndex()
    parent.children[name] = node
    return node


def _default_acl(fs: Overlay, parent: Node, umask: int | None) -> bytes | None:
    """The default ACL of *parent*, where it decides (the umask is not applied yet)."""
    if umask is None:
        return None
    try:
        return getxattr(fs, parent, acl.DEFAULT)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
        return None


def _new_owner(
    fs: Overlay, parent: Node, kind: int, mode: int, uid: int | None, gid: int | None
) -> tuple[tuple[int, int], int]:
    """Owner and mode of a new object (``inode_init_owner``, a filesystem's own rule).

    The caller's uid and gid (the process's when not given); in a set-gid directory the
    directory's group instead, and a new directory inherits the set-gid bit.
    """
    owner = (os.geteuid() if uid is None else uid, os.getegid() if gid is None else gid)
    parent_st = getattr_(fs, parent)
    if parent_st.mode & stat.S_ISGID:
        owner = (owner[0], parent_st.gid)
        if kind == DIR:
            mode |= stat.S_ISGID
    return owner, mode


def _put_in_upper(
    fs: Overlay,
    parent: Node,
    name: str,
    kind: int,
    make: Make,
    fixup: Callable[[int, str, bool], None] | None,
) -> bool:
    """Create an object at *name* in *parent*'s upper dir, replacing a whiteout atomically.

    The object is made in the work directory when a whiteout must be replaced, so the
    merged view never shows the lower object again in between. Returns whether the new
    object is an opaque directory (a directory created over a whiteout, as the kernel does).
    """
    copyup.copy_up(fs, parent)
    index = fs.index(parent)
    upper_fd = fs.upper_dir(parent)
    over = name in index.upper_whiteouts
    # the kernel's rule: a new directory over a whiteout or in a merged parent is opaque
    opaque = kind == DIR and (over or any(pos != UPPER for pos in parent.layers))
    if not over:
        make(upper_fd, name)
        if fixup is not None:
            fixup(upper_fd, name, opaque)
    else:
        _replace_whiteout(fs, upper_fd, name, kind, make, fixup, opaque)
        index.upper_whiteouts.discard(name)
    index.put(name, ((UPPER, kind),))
    return opaque


def _replace_whiteout(
    fs: Overlay,
    upper_fd: int,
    name: str,
    kind: int,
    make: Make,
    fixup: Callable[[int, str, bool], None] | None,
    opaque: bool,
) -> None:
    tmp = fs.tmpname()
    make(fs.work_fd, tmp)
    try:
        if fixup is not None:
            fixup(fs.work_fd, tmp, opaque)
        existing = fs.layers[UPPER].lstat(upper_fd, name)
        if existing is not None and is_whiteout_stat(existing):
            if kind == DIR:
                fs.upper.rename(fs.work_fd, tmp, upper_fd, name, RENAME_EXCHANGE)
                fs.upper.unlink(fs.work_fd, tmp)
            else:
                fs.upper.rename(fs.work_fd, tmp, upper_fd, name)
        else:
            fs.upper.rename(fs.work_fd, tmp, upper_fd, name, RENAME_NOREPLACE)
            fs.upper.drop_oci_whiteout(upper_fd, name)
    except BaseException:
        fs.upper.remove_tree(fs.work_fd, tmp)
        raise


# -- removing -------------------------------------------------------------------------------
def unlink(fs: Overlay, parent: Node, name: str) -> None:
    while True:
        fs.check_writable()
        node = namei.lookup(fs, parent, name)
        if fs.settle(parent, node):
            break
    if node.is_dir:
        raise oserror(errno.EISDIR, name)
    _remove_name(fs, parent, name, node)


def rmdir(fs: Overlay, parent: Node, name: str) -> None:
    while True:
        fs.check_writable()
        if name == ".":
            raise oserror(errno.EINVAL, name)
        node = namei.lookup(fs, parent, name)
        if fs.settle(parent, node):
            break
    if not node.is_dir:
        raise oserror(errno.ENOTDIR, name)
    if node is fs.root or name == "..":
        raise oserror(errno.ENOTEMPTY if name == ".." else errno.EBUSY, name)
    if len(fs.index(node)):
        raise oserror(errno.ENOTEMPTY, name)
    _remove_name(fs, parent, name, node)


def _remove_name(fs: Overlay, parent: Node, name: str, node: Node) -> None:
    """Take *name* out of the merged view, leaving a whiteout where a lower has it."""
    alias = alias_at(node, parent, name)
    copyup.copy_up(fs, parent)
    index = fs.index(parent)
    upper_fd = fs.upper_dir(parent)
    needs_whiteout = namei.lower_positive(fs, parent, name)
    if needs_whiteout:
        fs.upper.check_whiteout_fits(name)
    _keep_link_count(fs, node)
    if alias.in_upper:
        _forget_host(fs, upper_fd, name)
        _remove_upper(fs, upper_fd, name, node.is_dir, needs_whiteout)
    elif needs_whiteout:
        fs.upper.whiteout(upper_fd, name)
    if needs_whiteout:
        index.upper_whiteouts.add(name)
    index.drop(name)
    parent.children.pop(name, None)
    node.aliases.remove(alias)
    if node.is_dir:
        fs.release(node)


def _keep_link_count(fs: Overlay, node: Node) -> None:
    """Before one name of a lower hard link goes, copy the object up with all its names.

    The other names then count the links still visible (their upper object's st_nlink), as
    the kernel's do with ``index=on`` (it copies up into its index for the same reason).
    Left in the lower, they would keep reporting the lower's old count.
    """
    if node.is_dir or node.in_upper:
        return
    from layerfs.inode import host_stat

    if host_stat(fs, node).st_nlink > 1:
        copyup.copy_up(fs, node, data=False)


def _remove_upper(fs: Overlay, upper_fd: int, name: str, is_dir: bool, whiteout: bool) -> None:
    if whiteout and fs.upper.chardev_whiteouts:
        tmp = fs.tmpname()
        fs.upper.rename(upper_fd, name, fs.work_fd, tmp, RENAME_WHITEOUT)
        fs.upper.remove_tree(fs.work_fd, tmp)
        return
    if whiteout:
        fs.upper.whiteout(upper_fd, name)
    if not is_dir:
        fs.upper.unlink(upper_fd, name)
        return
    tmp = fs.tmpname()
    fs.upper.rename(upper_fd, name, fs.work_fd, tmp)
    fs.upper.remove_tree(fs.work_fd, tmp)


def _forget_host(fs: Overlay, upper_fd: int, name: str) -> None:
    """The upper object *name* is about to go: free its host identity for reuse."""
    st = fs.layers[UPPER].lstat(upper_fd, name)
    if st is not None and (stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1):
        fs.inodes.forget_upper(st)


# -- renaming -------------------------------------------------------------------------------
def rename(
    fs: Overlay, old_parent: Node, old_name: str, new_parent: Node, new_name: str, flags: int
) -> None:
    """rename(2)/renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE; never EXDEV.

    A directory that merges lower content is first replaced by a complete opaque copy in the
    upper layer (no ``redirect`` xattrs), then renamed there; the old name is whited out where
    a lower layer has it.
    """
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
        RENAME_NOREPLACE | RENAME_EXCHANGE
    ):
        raise oserror(errno.EINVAL)
    while True:
        fs.check_writable()
        src = namei.lookup(fs, old_parent, old_name)
        check_name(new_name)
        if not new_parent.is_dir:
            raise oserror(errno.ENOTDIR, new_name)
        try:
            dst: Node | None = namei.lookup(fs, new_parent, new_name)
        except FileNotFoundError:
            dst = None
        moving = [src] if dst is None else [src, dst]
        if fs.settle(old_parent, new_parent, subtree=moving):
            break
    if old_name in (".", "..") or new_name in (".", ".."):
        raise oserror(errno.EBUSY)
    check_rename(old_parent, src, new_parent, dst, flags)
    if dst is src:
        return  # same object (or the same hard link): nothing to do, as POSIX says
    if flags & RENAME_EXCHANGE:
        assert dst is not None
        _exchange(fs, old_parent, old_name, src, new_parent, new_name, dst)
        return
    check_rename_types(src, dst)
    if dst is not None and dst.is_dir and len(fs.index(dst)):
        raise oserror(errno.ENOTEMPTY)
    _rename(fs, old_parent, old_name, src, new_parent, new_name, dst)


def check_rename(
    old_parent: Node, src: Node, new_parent: Node, dst: Node | None, flags: int
) -> None:
    """The checks renameat2(2) makes on names before any permission, in its order."""
    if flags & RENAME_NOREPLACE and dst is not None:
        raise oserror(errno.EEXIST)
    if flags & RENAME_EXCHANGE and dst is None:
        raise oserror(errno.ENOENT)
    if src is new_parent or (src.is_dir and src.is_ancestor_of(new_parent)):
        raise oserror(errno.EINVAL)  # the source is an ancestor of the target
    if dst is not None and dst.is_dir and dst.is_ancestor_of(old_parent):
        raise oserror(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)


def check_rename_types(src: Node, dst: Node | None) -> None:
    """ENOTDIR or EISDIR for a rename over an object of the other kind."""
    if dst is None:
        return
    if src.is_dir and not dst.is_dir:
        raise oserror(errno.ENOTDIR)
    if not src.is_dir and dst.is_dir:
        raise oserror(errno.EISDIR)


def _rename(
    fs: Overlay,
    old_parent: Node,
    old_name: str,
    src: Node,
    new_parent: Node,
    new_name: str,
    dst: Node | None,
) -> None:
    src_alias = alias_at(src, old_parent, old_name)
    if namei.lower_positive(fs, old_parent, old_name):
        fs.upper.check_whiteout_fits(old_name)
    _make_movable(fs, src, src_alias)
    if dst is not None:
        _keep_link_count(fs, dst)
    copyup.copy_up(fs, new_parent)
    old_index, new_index = fs.index(old_parent), fs.index(new_parent)
    old_fd, new_fd = fs.upper_dir(old_parent), fs.upper_dir(new_parent)
    leave_whiteout = namei.lower_positive(fs, old_parent, old_name)
    if dst is not None:
        _clear_target(fs, new_parent, new_name, dst, new_fd)
    if src.is_dir:
        _opaque_for_move(fs, src, new_parent)
    _move_in_upper(fs, old_fd, old_name, new_fd, new_name, src.is_dir, leave_whiteout)
    old_index.drop(old_name)
    old_parent.children.pop(old_name, None)
    if leave_whiteout:
        old_index.upper_whiteouts.add(old_name)
    new_index.upper_whiteouts.discard(new_name)
    new_index.put(new_name, ((UPPER, src.kind),))
    src_alias.parent, src_alias.name = new_parent, new_name
    new_parent.children[new_name] = src


def _make_movable(fs: Overlay, node: Node, alias: Alias) -> None:
    """Bring *node* wholly into the upper under *alias*, so a host rename can move it."""
    if node.is_dir:
        if any(pos != UPPER for pos in node.layers):
            copyup.copy_up_tree(fs, node)
    else:
        copyup.copy_up(fs, node, alias, data=True)


def _clear_target(fs: Overlay, parent: Node, name: str, dst: Node, upper_fd: int) -> None:
    """Drop the object a rename replaces from the node tree (and an upper dir from disk)."""
    dst_alias = alias_at(dst, parent, name)
    if dst_alias.in_upper:
        _forget_host(fs, upper_fd, name)
    if dst.is_dir and dst_alias.in_upper:
        tmp = fs.tmpname()
        fs.upper.rename(upper_fd, name, fs.work_fd, tmp)
        fs.upper.remove_tree(fs.work_fd, tmp)
    dst.aliases.remove(dst_alias)
    if dst.is_dir:
        fs.release(dst)
    parent.children.pop(name, None)
    fs.index(parent).drop(name)


def _opaque_for_move(fs: Overlay, node: Node, new_parent: Node) -> None:
    """A directory moved into a merged parent is marked opaque, as the kernel does."""
    if node.opaque or all(pos == UPPER for pos in new_parent.layers):
        return
    fs.upper.setxattr(*fs.upper_location(node), fs.options.upper_format.opaque_xattr, b"y")
    node.opaque = True


def _move_in_upper(
    fs: Overlay,
    old_fd: int,
    old_name: str,
    new_fd: int,
    new_name: str,
    is_dir: bool,
    leave_whiteout: bool,
) -> None:
    upper = fs.upper
    chardev = upper.chardev_whiteouts
    target = fs.layers[UPPER].lstat(new_fd, new_name)
    if target is not None and is_whiteout_stat(target) and is_dir:
        upper.rename(old_fd, old_name, new_fd, new_name, RENAME_EXCHANGE)
        if not leave_whiteout:
            upper.unlink(old_fd, old_name)
        elif not chardev:
            upper.unlink(old_fd, old_name)
            upper.whiteout(old_fd, old_name)
        return
    flags = RENAME_WHITEOUT if leave_whiteout and chardev else 0
    upper.rename(old_fd, old_name, new_fd, new_name, flags)
    if target is None:
        upper.drop_oci_whiteout(new_fd, new_name)
    if leave_whiteout and not chardev:
        upper.whiteout(old_fd, old_name)


def _exchange(
    fs: Overlay,
    old_parent: Node,
    old_name: str,
    src: Node,
    new_parent: Node,
    new_name: str,
    dst: Node,
) -> None:
    for moving, target_parent in ((src, new_parent), (dst, old_parent)):
        if moving.is_dir and (moving is target_parent or moving.is_ancestor_of(target_parent)):
            raise oserror(errno.EINVAL)
    src_alias, dst_alias = alias_at(src, old_parent, old_name), alias_at(dst, new_parent, new_name)
    _make_movable(fs, src, src_alias)
    _make_movable(fs, dst, dst_alias)
    if src.is_dir:
        _opaque_for_move(fs, src, new_parent)
    if dst.is_dir:
        _opaque_for_move(fs, dst, old_parent)
    old_fd, new_fd = fs.upper_dir(old_parent), fs.upper_dir(new_parent)
    fs.upper.rename(old_fd, old_name, new_fd, new_name, RENAME_EXCHANGE)
    fs.index(old_parent).put(old_name, ((UPPER, dst.kind),))
    fs.index(new_parent).put(new_name, ((UPPER, src.kind),))
    src_alias.parent, src_alias.name = new_parent, new_name
    dst_alias.parent, dst_alias.name = old_parent, old_name
    old_parent.children[old_name] = dst
    new_parent.children[new_name] = src
