"""Mount options: split one ``-o`` list into what the stack, libfuse and the adapter each take.

A layerfs mount accepts the option syntax of ``mount -t overlay`` (``lowerdir=A:B,upperdir=U,
workdir=W``) mixed with FUSE options (``allow_other``, ``fsname=``) and the generic options
mount(8) and /etc/fstab pass along (``rw``, ``noatime``, ``nofail``...), and the options
containers-storage passes to fuse-overlayfs (id mappings for :mod:`fuse_mount.idmap`, an
SELinux ``context=``, ``fsync=``...). :func:`sort_mount_options` decides who owns each option
and reads the FUSE and adapter ones into :class:`MountOptions`; the stack's own are read by
:mod:`layerfs.options`. :func:`parse_mount` does both, once, where a mount is asked for, and
no option is silently dropped unless it is on one of the ignore lists below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fuse_mount.attrs import Timeouts
from fuse_mount.idmap import IdMap, build_idmap
from layerfs.errors import ConfigError
from layerfs.options import Lower, StackSpec, parse_option_items
from layerfs.privilege import is_privileged

# Passed to libfuse as they are: FUSE options and the generic flags libfuse turns into
# mount(2) flags. libfuse itself adds nosuid,nodev unless suid / dev are given.
FUSE_FLAGS = frozenset(
    {
        "allow_other",
        "allow_root",
        "auto_unmount",
        "ro",
        "rw",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "async",
        "sync",
        "dirsync",
        "atime",
        "noatime",
    }
)
FUSE_VALUED = frozenset({"fsname", "subtype"})
# Flags that undo each other: the one given last wins (except that ro always wins over rw).
_PAIRS = (("dev", "nodev"), ("suid", "nosuid"), ("exec", "noexec"), ("atime", "noatime"))
OPPOSITE = {**dict(_PAIRS), **{b: a for a, b in _PAIRS}, "sync": "async", "async": "sync"}

# Accepted and ignored: userspace-only fstab options and atime variants libfuse lacks.
IGNORED_FLAGS = frozenset(
    {
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "nofail",
        "_netdev",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "lazytime",
        "nolazytime",
        "diratime",
        "nodiratime",
        "loud",
        "silent",
        "iversion",
        "noiversion",
        "mand",
        "nomand",
        "default_permissions",  # always on
    }
)
IGNORED_PREFIXES = ("x-", "X-", "comment=")
# fuse-overlayfs options that change nothing here: an SELinux label (a FUSE mount takes none),
# its inode-number, threading and writeback switches, and the only redirect_dir it allows.
IGNORED_COMPAT_FLAGS = frozenset({"redirect_dir=off", "fsync=1"})
IGNORED_COMPAT_PREFIXES = ("context=", "xino=", "threaded=", "fast_ino=", "writeback=")
# fuse-overlayfs options meaning a stack option: no fsync is the kernel's volatile.
COMPAT_STACK_OPTIONS = {"fsync=0": "volatile"}

# Options of the adapter itself (seconds; worker threads for data I/O; microseconds).
ADAPTER_VALUED = frozenset(
    {"timeout", "lower_timeout", "threads", "busy_poll", "backend", "passthrough"}
)
BACKENDS = ("native", "pyfuse3")
# Owners shown through the mount (see fuse_mount.idmap).
IDMAP_VALUED = frozenset({"uidmapping", "gidmapping", "squash_to_uid", "squash_to_gid"})
IDMAP_FLAGS = frozenset({"squash_to_root"})

DEFAULT_FSNAME = "layerfs"
DEFAULT_THREADS = 8
DEFAULT_BUSY_POLL_US = 200  # see fuse_mount.loop
DEFAULT_BACKEND = "native"  # the faster one: docs/mount.md and docs/performance.md say why


@dataclass(frozen=True, slots=True)
class MountOptions:
    """The FUSE and adapter options of one mount (its stack is a :class:`StackSpec`)."""

    fuse_options: frozenset[str]
    readonly: bool
    timeouts: Timeouts
    threads: int
    busy_poll_us: int = DEFAULT_BUSY_POLL_US
    backend: str = DEFAULT_BACKEND
    passthrough: bool = True  # native backend, as root: file I/O bypasses the daemon
    idmap: IdMap | None = None
    acl: bool = True  # the kernel checks POSIX ACLs; default ACLs inherited (off: ``noacl``)

    def as_readonly(self) -> MountOptions:
        """These options with ``ro`` given last (a stack without an upper mounts so)."""
        fuse = (self.fuse_options - {"rw"}) | {"ro"}
        return replace(self, fuse_options=fuse, readonly=True)


def parse_mount(
    items: Iterable[str],
    *,
    lowers: Sequence[Lower] = (),
    upper: Path | None = None,
    work: Path | None = None,
    fsname: str | None = None,
    privileged: bool | None = None,
) -> tuple[StackSpec, MountOptions]:
    """Read the option *items* of one mount into its stack and its FUSE/adapter options.

    *lowers*, *upper* and *work* are layers given apart from the options (see
    :func:`layerfs.options.parse_option_items`); *fsname* is the mount's source. The upper
    format follows *privileged*, by default whether this process has real privilege
    (:func:`layerfs.privilege.is_privileged`). A stack without an upper mounts read-only.
    Raises :class:`ConfigError` for an option nobody takes or a malformed one.
    """
    options, stack_items = sort_mount_options(items, fsname=fsname)
    if privileged is None:
        privileged = is_privileged()
    spec, unknown = parse_option_items(
        stack_items, privileged=privileged, lowers=lowers, upper=upper, work=work
    )
    if unknown:
        raise ConfigError(f"unknown mount option: {','.join(unknown)}")
    if spec.upper is None and not options.readonly:
        options = options.as_readonly()
    return spec, options


def sort_mount_options(
    items: Iterable[str], *, fsname: str | None = None
) -> tuple[MountOptions, list[str]]:
    """Read the FUSE and adapter options among *items*; return them and the rest, in order,
    for the stack (fuse-overlayfs's ``fsync=0`` becomes the stack's ``volatile``).

    Raises :class:`ConfigError` for a malformed adapter option; the stack reads its own.
    """
    items = list(items)
    stack: list[str] = []
    fuse: set[str] = {"default_permissions"}
    adapter: dict[str, str] = {}
    ids: dict[str, str] = {}
    valued = {"fsname": fsname or DEFAULT_FSNAME, "subtype": DEFAULT_FSNAME}
    for item in items:
        key, _, value = item.partition("=")
        if item in FUSE_FLAGS:
            fuse.discard(OPPOSITE.get(item, ""))
            fuse.add(item)
        elif key in FUSE_VALUED:
            valued[key] = value
        elif key in ADAPTER_VALUED:
            adapter[key] = value
        elif key in IDMAP_VALUED:
            ids[key] = value
        elif _ignored(item):
            continue
        elif item not in IDMAP_FLAGS and item != "noacl":
            stack.append(COMPAT_STACK_OPTIONS.get(item, item))
    if "ro" in fuse:
        fuse.discard("rw")
    fuse.update(f"{key}={_fuse_value(key, value)}" for key, value in valued.items())
    options = MountOptions(
        fuse_options=frozenset(fuse),
        readonly="ro" in fuse,
        timeouts=_timeouts(adapter),
        threads=_positive_int(adapter, "threads", DEFAULT_THREADS),
        busy_poll_us=_whole_number(adapter, "busy_poll", DEFAULT_BUSY_POLL_US),
        backend=_choice(adapter, "backend", BACKENDS, DEFAULT_BACKEND),
        passthrough=_choice(adapter, "passthrough", ("on", "off"), "on") == "on",
        idmap=build_idmap(ids, squash_to_root="squash_to_root" in items),
        acl="noacl" not in items,
    )
    return options, stack


def _ignored(item: str) -> bool:
    return (
        item in IGNORED_FLAGS
        or item in IGNORED_COMPAT_FLAGS
        or item.startswith(IGNORED_PREFIXES)
        or item.startswith(IGNORED_COMPAT_PREFIXES)
    )


def _choice(adapter: dict[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = adapter.get(key, default)
    if value not in allowed:
        raise ConfigError(f"mount option {key}= must be one of {', '.join(allowed)}")
    return value


def _fuse_value(key: str, value: str) -> str:
    if not value:
        raise ConfigError(f"mount option {key}= needs a value")
    if "," in value:
        raise ConfigError(f"mount option {key}= cannot contain a comma: {value!r}")
    return value


def _timeouts(adapter: dict[str, str]) -> Timeouts:
    default = Timeouts()
    return Timeouts(
        upper=_seconds(adapter, "timeout", default.upper),
        lower=_seconds(adapter, "lower_timeout", default.lower),
    )


def _seconds(adapter: dict[str, str], key: str, default: float) -> float:
    if key not in adapter:
        return default
    try:
        value = float(adapter[key])
    except ValueError:
        raise ConfigError(f"mount option {key}= needs a number of seconds") from None
    if not value >= 0:
        raise ConfigError(f"mount option {key}= cannot be negative")
    return value


def _positive_int(adapter: dict[str, str], key: str, default: int) -> int:
    value = _whole_number(adapter, key, default)
    if value < 1:
        raise ConfigError(f"mount option {key}= must be at least 1")
    return value


def _whole_number(adapter: dict[str, str], key: str, default: int) -> int:
    if key not in adapter:
        return default
    try:
        value = int(adapter[key])
    except ValueError:
        raise ConfigError(f"mount option {key}= needs a whole number") from None
    if value < 0:
        raise ConfigError(f"mount option {key}= cannot be negative")
    return value
