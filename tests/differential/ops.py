"""Operation sequences as plain data, a strategy that generates them, and two runners.

:func:`run_ops` applies a sequence to a directory with plain :mod:`os` calls, so the same
sequence drives kernel overlayfs, a FUSE mount of layerfs or any other directory;
:func:`run_stack` applies it through the :class:`layerfs.Stack` path API. Both return one
outcome per operation: ``None`` for success, the errno otherwise.

Generated paths respect the name classes of :mod:`tests.property.layers`: parents are only
directory-class names and symlinks/fifos only ever live at special names, so no runner walks
through a symlink (the Stack path API refuses to, ``os`` would follow) or opens a fifo.

On kernel overlayfs without ``redirect_dir``, renaming a directory that has lower content
fails with EXDEV. :func:`run_ops` then does what ``mv`` does (copy the tree with its metadata
and xattrs, remove the source) and records success, so both sides run the same sequence.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import strategies as st

from tests import forms
from tests.property import layers as L

if TYPE_CHECKING:
    from layerfs import CallerView, Credentials, Stack
    from tests.property.model import Model

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
UTIME_CHOICES = (1_234_567_890 * 10**9, 1_600_000_000 * 10**9 + 123_456_789)
CHMOD_CHOICES = (0o700, 0o644, 0o755, 0o600, 0o1777)
CHOWN_CHOICES = ((1000, -1), (-1, 1000), (0, 0), (1001, 1001))
WRITE_DATA = (b"", b"new", b"overwrite data\n", bytes(range(256)) * 30)
EXCHANGE_TMP = ".xchg"  # never a generated name, so it has no lower content

Outcome = int | None


@dataclass(frozen=True)
class Op:
    """One operation. Unused fields keep their defaults; ``str()`` is a readable call."""

    kind: str
    path: str
    other: str = ""  # rename/link destination, symlink target
    data: bytes = b""
    how: str = ""  # write: "trunc", "append" or "at" (pwrite at ``number``)
    number: int = 0  # truncate size, write offset, mode, mtime
    uid: int = -1
    gid: int = -1
    flags: int = 0  # rename flags, setxattr flags
    xattr: str = ""

    def __str__(self) -> str:
        extra = [self.other, self.how, self.xattr]
        args = [repr(a) for a in extra if a]
        if self.kind in ("truncate", "chmod", "mkdir", "mkfifo", "utimes") or self.how == "at":
            args.append(oct(self.number) if self.kind in ("chmod", "mkdir") else str(self.number))
        if self.kind == "chown":
            args.append(f"{self.uid}:{self.gid}")
        if self.flags:
            args.append(f"flags={self.flags}")
        if self.data:
            args.append(f"data[{len(self.data)}]")
        return f"{self.kind}({self.path!r}{''.join(', ' + a for a in args)})"


# --- generation -----------------------------------------------------------------------------


@st.composite
def paths(draw: st.DrawFn, leaf: tuple[str, ...], max_depth: int = 3) -> str:
    """A path of directory-class parents and a leaf from *leaf* (it may well not exist)."""
    depth = draw(st.sampled_from((1, 1, 1, 2, 2, 3)[: max_depth * 2]))
    parts = [draw(st.sampled_from(L.DIR_NAMES)) for _ in range(depth - 1)]
    return "/" + "/".join([*parts, draw(st.sampled_from(leaf))])


ANY_LEAF = L.DIR_NAMES + L.FILE_NAMES + L.SPECIAL_NAMES
PLAIN_LEAF = L.DIR_NAMES + L.FILE_NAMES


@dataclass
class _Picker:
    """Draws paths, two times in three among those that exist in *model* when there is one."""

    draw: st.DrawFn
    model: Model | None

    def __call__(self, leaf: tuple[str, ...]) -> str:
        existing = []
        if self.model is not None:
            existing = sorted(p for p in self.model.nodes if p != "/" and L.name_of(p) in leaf)
        if existing and self.draw(st.integers(0, 2)) > 0:
            return self.draw(st.sampled_from(existing))
        return self.draw(paths(leaf))


def _pair(pick: _Picker) -> tuple[str, str]:
    """Two paths of the same name class (a symlink is never moved to a directory name)."""
    special = pick.draw(st.integers(0, 3)) == 0
    leaf = L.SPECIAL_NAMES if special else PLAIN_LEAF
    old = pick(leaf)
    return old, pick(leaf) if pick.draw(st.booleans()) else pick.draw(paths(leaf))


@st.composite
def ops(draw: st.DrawFn, model: Model | None = None) -> Op:
    """One operation; with a *model* of the current state its paths mostly exist."""
    pick = _Picker(draw, model)
    kind = draw(st.sampled_from(KINDS))
    plain = pick(PLAIN_LEAF)
    if kind == "write":
        how = draw(st.sampled_from(("trunc", "append", "at")))
        data = draw(st.sampled_from(WRITE_DATA))
        return Op(kind, plain, data=data, how=how, number=draw(st.sampled_from((0, 3, 9000))))
    if kind == "truncate":
        return Op(kind, plain, number=draw(st.sampled_from((0, 2, 7000))))
    if kind in ("mkdir", "rmdir"):
        return Op(kind, pick(L.DIR_NAMES), number=draw(st.sampled_from((0o755, 0o700))))
    if kind in ("unlink", "utimes", "chown"):
        uid, gid = draw(st.sampled_from(CHOWN_CHOICES))
        mtime = draw(st.sampled_from(UTIME_CHOICES))
        return Op(kind, pick(ANY_LEAF), number=mtime, uid=uid, gid=gid)
    if kind in ("rename", "link"):
        old, new = _pair(pick)
        flags = draw(st.sampled_from((0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE)))
        return Op(kind, old, other=new, flags=flags if kind == "rename" else 0)
    if kind == "symlink":
        target = draw(st.sampled_from(("f", "/x")))
        return Op(kind, pick(L.SPECIAL_NAMES), other=target)
    if kind == "mkfifo":
        return Op(kind, pick(L.SPECIAL_NAMES), number=0o644)
    if kind == "chmod":
        return Op(kind, plain, number=draw(st.sampled_from(CHMOD_CHOICES)))
    name = draw(st.sampled_from(L.XATTR_NAMES))
    if kind == "setxattr":
        flags = draw(st.sampled_from((0, 0, XATTR_CREATE, XATTR_REPLACE)))
        return Op(kind, plain, xattr=name, data=draw(st.sampled_from((b"", b"v2"))), flags=flags)
    return Op(kind, plain, xattr=name)


ALL_KINDS = (
    *("write",) * 3,
    "truncate",
    *("mkdir",) * 2,
    "rmdir",
    *("unlink",) * 2,
    *("rename",) * 4,
    "link",
    "symlink",
    "mkfifo",
    "chmod",
    "chown",
    "utimes",
    "setxattr",
    "removexattr",
)
# Without an index (rootless runs, see tests.forms) the kernel's two names of a copied-up
# lower object are two inodes (a rename between them fails with ESTALE), so link() is not
# compared there; privileged runs cover it.
KINDS = tuple(kind for kind in ALL_KINDS if not (forms.ROOTLESS and kind == "link"))


def generate(
    layers: list[L.Layer] | None = None, min_size: int = 1, max_size: int = 25
) -> st.SearchStrategy[list[Op]]:
    """A strategy for one operation sequence.

    Given the *layers* it will run on, the sequence is drawn while a reference model follows
    it, so most operations name paths that exist at that point; without, paths are blind.
    """
    if layers is None:
        return st.lists(ops(), min_size=min_size, max_size=max_size)
    return _guided(layers, min_size, max_size)


@st.composite
def _guided(draw: st.DrawFn, layers: list[L.Layer], min_size: int, max_size: int) -> list[Op]:
    from tests.property.model import Model

    model = Model(layers)
    sequence = []
    for _ in range(draw(st.integers(min_size, max_size))):
        op = draw(ops(model))
        _outcome(partial(apply_model, model, op))
        sequence.append(op)
    return sequence


@st.composite
def scenarios(
    draw: st.DrawFn,
    styles: L.Styles = L.KERNEL_STYLES,
    max_size: int = 25,
    hard_links: bool = True,
) -> tuple[list[L.Layer], list[Op]]:
    """Lowers plus an operation sequence guided by them."""
    layers = draw(L.layer_stacks(styles, hard_links=hard_links))
    return layers, draw(generate(layers, max_size=max_size))


# --- running on a directory with os calls ---------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old), None, str(new))


def _copy_attrs(src: Path, dst: Path) -> None:
    """Give the new directory *dst* the owner, mode, mtime and user xattrs of *src*."""
    st_ = src.lstat()
    for name in os.listxattr(src, follow_symlinks=False):
        if name.startswith("user."):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False))
    os.chown(dst, st_.st_uid, st_.st_gid)
    os.chmod(dst, stat.S_IMODE(st_.st_mode))
    os.utime(dst, ns=(st_.st_atime_ns, st_.st_mtime_ns))


@contextmanager
def _as_root() -> Iterator[None]:
    """Act as root for a moment in a worker that dropped to a user (see :func:`run_ops_as`).

    The ``mv``-like fallback below stands for what the kernel with ``redirect_dir=on`` would
    have done in one step: move the directory keeping its owner, which ``mv`` run by a user
    could not. The kernel's permission checks for the rename had already passed.
    """
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        yield
        return
    os.seteuid(0)
    os.setegid(0)
    try:
        yield
    finally:
        os.setegid(gid)
        os.seteuid(uid)


def _move_dir(old: Path, new: Path) -> None:
    """Move a directory the kernel will not rename: a new directory, each child moved into it.

    This is ``mv``'s copy-and-delete with one refinement: non-directories are renamed (the
    kernel always can), not copied, so hard links to names outside the tree stay linked, as
    they do in layerfs. The resulting tree and upper are otherwise those of ``cp -a; rm -r``.
    """
    if new.is_symlink() or new.exists():
        if any(os.path.lexists(new / n) for n in os.listdir(new)):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(new))
        new.rmdir()
    new.mkdir()
    for child in sorted(os.listdir(old)):
        if os.path.lexists(old / child):  # the kernel may list lower whiteouts
            rename(old / child, new / child, 0)
    _copy_attrs(old, new)
    old.rmdir()


def rename(old: Path, new: Path, flags: int) -> None:
    """renameat2(); on EXDEV (a directory with lower content) move it piecewise, like ``mv``.

    The kernel returns EXDEV only after the VFS checks (existence, types, ancestry), so only
    the file system's own check, an empty target directory, is left to :func:`_move_dir`.
    """
    try:
        renameat2(old, new, flags)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    with _as_root():
        if flags & RENAME_EXCHANGE:
            tmp = old.parent / EXCHANGE_TMP
            rename(old, tmp, 0)
            rename(new, old, 0)
            rename(tmp, new, 0)
        else:
            _move_dir(old, new)


def _write_os(p: Path, op: Op) -> None:
    extra = {"trunc": os.O_TRUNC, "append": os.O_APPEND}.get(op.how, 0)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | extra, 0o644)
    try:
        if op.how == "at":
            os.pwrite(fd, op.data, op.number)
        else:
            os.write(fd, op.data)
    finally:
        os.close(fd)


def apply_os(root: Path, op: Op) -> None:
    """Apply *op* to the tree at *root* with plain os calls (no symlink is ever followed)."""
    p = root / op.path.lstrip("/")
    q = root / op.other.lstrip("/")
    if op.kind == "write":
        _write_os(p, op)
    elif op.kind == "truncate":
        os.truncate(p, op.number)
    elif op.kind == "mkdir":
        os.mkdir(p, op.number)
    elif op.kind == "rmdir":
        os.rmdir(p)
    elif op.kind == "unlink":
        os.unlink(p)
    elif op.kind == "rename":
        rename(p, q, op.flags)
    elif op.kind == "link":
        os.link(p, q, follow_symlinks=False)
    elif op.kind == "symlink":
        os.symlink(op.other, p)
    elif op.kind == "mkfifo":
        os.mkfifo(p, op.number)
    elif op.kind == "chmod":
        os.chmod(p, op.number)
    elif op.kind == "chown":
        os.chown(p, op.uid, op.gid, follow_symlinks=False)
    elif op.kind == "utimes":
        os.utime(p, ns=(op.number, op.number), follow_symlinks=False)
    elif op.kind == "setxattr":
        os.setxattr(p, op.xattr, op.data, op.flags, follow_symlinks=False)
    elif op.kind == "removexattr":
        os.removexattr(p, op.xattr, follow_symlinks=False)
    else:
        raise ValueError(f"unknown operation {op.kind}")


def run_ops(root: Path, sequence: Sequence[Op]) -> list[Outcome]:
    """Apply each operation under *root*; one outcome (None or errno) per operation."""
    return [_outcome(partial(apply_os, root, op)) for op in sequence]


def run_ops_as(root: Path, sequence: Sequence[Op], creds: Credentials | None) -> list[Outcome]:
    """:func:`run_ops` in a forked worker acting as *creds* (None: in this process, as root).

    The worker takes the uid, gid and groups as its real, effective and filesystem ids and
    keeps 0 as its saved ids only for the fallback of :func:`rename`; umask 0, so modes are
    exactly what the operations ask for on every side.
    """
    if creds is None:
        return run_ops(root, sequence)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the worker
        code = 1
        try:
            os.close(read_end)
            os.chdir(root)  # the path to the mount need not be open to the user
            os.setgroups(sorted(creds.groups | {creds.gid}))
            os.setresgid(creds.gid, creds.gid, 0)
            os.setresuid(creds.uid, creds.uid, 0)
            os.umask(0)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(run_ops(Path("."), sequence), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the worker failed"
    outcomes: list[Outcome] = pickle.loads(data)
    return outcomes


# --- running on a layerfs Stack -------------------------------------------------------------


def _write_stack(stack: Stack | CallerView, op: Op) -> None:
    extra = {"trunc": os.O_TRUNC, "append": os.O_APPEND}.get(op.how, 0)
    with stack.open(op.path, os.O_WRONLY | os.O_CREAT | extra, 0o644) as handle:
        handle.write(op.data, op.number if op.how == "at" else None)


def apply_stack(stack: Stack | CallerView, op: Op) -> None:
    """Apply *op* through the Stack path API."""
    simple = {
        "truncate": lambda: stack.truncate(op.path, op.number),
        "mkdir": lambda: stack.mkdir(op.path, op.number),
        "rmdir": lambda: stack.rmdir(op.path),
        "unlink": lambda: stack.unlink(op.path),
        "rename": lambda: stack.rename(op.path, op.other, op.flags),
        "link": lambda: stack.link(op.path, op.other),
        "symlink": lambda: stack.symlink(op.other, op.path),
        "mkfifo": lambda: stack.mknod(op.path, stat.S_IFIFO | op.number),
        "chmod": lambda: stack.chmod(op.path, op.number),
        "chown": lambda: stack.chown(op.path, op.uid, op.gid),
        "utimes": lambda: stack.utimes(op.path, op.number, op.number),
        "setxattr": lambda: stack.setxattr(op.path, op.xattr, op.data, op.flags),
        "removexattr": lambda: stack.removexattr(op.path, op.xattr),
    }
    if op.kind == "write":
        _write_stack(stack, op)
    else:
        simple[op.kind]()


def run_stack(stack: Stack | CallerView, sequence: Sequence[Op]) -> list[Outcome]:
    """Apply each operation through *stack*; one outcome (None or errno) per operation."""
    return [_outcome(partial(apply_stack, stack, op)) for op in sequence]


# --- running on the reference model ---------------------------------------------------------


def apply_model(model: Model, op: Op) -> None:
    """Apply *op* to the reference model."""
    calls: dict[str, Callable[[], None]] = {
        "write": lambda: model.write(op.path, op.data, op.how, op.number),
        "truncate": lambda: model.truncate(op.path, op.number),
        "mkdir": lambda: model.mkdir(op.path, op.number),
        "rmdir": lambda: model.rmdir(op.path),
        "unlink": lambda: model.unlink(op.path),
        "rename": lambda: model.rename(op.path, op.other, op.flags),
        "link": lambda: model.link(op.path, op.other),
        "symlink": lambda: model.symlink(op.other, op.path),
        "mkfifo": lambda: model.mkfifo(op.path, op.number),
        "chmod": lambda: model.chmod(op.path, op.number),
        "chown": lambda: model.chown(op.path, op.uid, op.gid),
        "utimes": lambda: model.utimes(op.path, op.number),
        "setxattr": lambda: model.setxattr(op.path, op.xattr, op.data, op.flags),
        "removexattr": lambda: model.removexattr(op.path, op.xattr),
    }
    calls[op.kind]()


def run_model(model: Model, sequence: Sequence[Op]) -> list[Outcome]:
    """Apply each operation to *model*; one outcome (None or errno) per operation."""
    return [_outcome(partial(apply_model, model, op)) for op in sequence]


def _outcome(call: Callable[[], None]) -> Outcome:
    try:
        call()
    except OSError as exc:
        assert exc.errno is not None, exc
        return exc.errno
    return None
