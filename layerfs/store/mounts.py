"""A container's mounts: named and anonymous volumes and bind mounts, and where they go.

A :class:`MountRequest` is what a user asks for, in the ``-v`` syntax of ``layerfs create``:
``NAME:/path[:ro]`` a named volume, ``/host/path:/path[:ro]`` a bind mount, ``/path`` a new
anonymous volume. :func:`plan_mounts` checks the requests against the image and adds an
anonymous volume for every path of the image config's ``Volumes`` that no request covers; the
result is a list of :class:`Mount`, the records a container keeps.

Each target is resolved in the image's merged view the way a runtime resolves a mount
destination inside its root filesystem: a symlink met on the way is followed inside the image
(an absolute link target starts again at the image's root). The resolved path is where the
runtime mounts the volume, what the initial copy reads, and what ``diff`` and ``commit`` leave
out. A target whose symlinks lead above the image's root (``..`` past ``/``), or that passes
through something other than a directory, is refused. Nothing here writes anything.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from layerfs.errors import BadReferenceError, ConfigError, StoreError
from layerfs.options import Lower
from layerfs.stack import Stack
from layerfs.types import Stat

MAX_SYMLINKS = 40  # links followed while resolving one target, as the kernel's limit
ANONYMOUS_NAME_BYTES = 32  # an anonymous volume's name is 64 hex digits
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_OPTIONS = {"ro": True, "rw": False}


def check_volume_name(name: str) -> str:
    """*name* if it is a valid volume name; :class:`BadReferenceError` otherwise."""
    if not VOLUME_NAME_RE.match(name):
        raise BadReferenceError(
            f"invalid volume name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 characters"
        )
    return name


class MountKind(enum.Enum):
    """A volume of the store, or a host path bound into the container."""

    VOLUME = "volume"
    BIND = "bind"


@dataclass(frozen=True, slots=True)
class MountRequest:
    """One requested mount; *source* is a volume name, a host path, or None (anonymous)."""

    kind: MountKind
    source: str | None
    target: str
    readonly: bool = False

    @classmethod
    def parse(cls, spec: str) -> MountRequest:
        """Parse ``SOURCE:TARGET[:OPTIONS]`` or ``TARGET``; OPTIONS is ``ro`` or ``rw``.

        A SOURCE starting with ``/`` is a host path (a bind mount), anything else a volume
        name. Raises :class:`ConfigError` (or :class:`BadReferenceError` for a bad volume name).
        """
        parts = spec.split(":")
        if len(parts) == 1:
            return cls(MountKind.VOLUME, None, normalize_target(parts[0]))
        if len(parts) > 3 or not parts[0]:
            raise ConfigError(f"invalid volume {spec!r}: expected SOURCE:TARGET[:ro|rw]")
        source, target = parts[0], normalize_target(parts[1])
        readonly = _readonly(parts[2], spec) if len(parts) == 3 else False
        if source.startswith("/"):
            return cls(MountKind.BIND, os.path.normpath(source), target, readonly)
        return cls(MountKind.VOLUME, check_volume_name(source), target, readonly)


def _readonly(options: str, spec: str) -> bool:
    words = set(options.split(","))
    if not words <= set(_OPTIONS) or len(words) != 1:
        raise ConfigError(f"invalid volume options in {spec!r}: give ro or rw")
    return _OPTIONS[words.pop()]


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount a container records.

    *source* is the volume's name or the host path; *target* the path asked for; *path* the
    target resolved in the image (see the module docstring), where the runtime mounts it.
    """

    kind: MountKind
    source: str
    target: str
    path: str
    readonly: bool = False
    anonymous: bool = False

    def covers(self, path: str) -> bool:
        """Whether the in-image *path* is this mount's path or below it."""
        return path == self.path or path.startswith(self.path + "/")

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind.value,
            "source": self.source,
            "target": self.target,
            "path": self.path,
            "readonly": self.readonly,
            "anonymous": self.anonymous,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Mount:
        try:
            return cls(
                MountKind(obj["type"]),
                str(obj["source"]),
                str(obj["target"]),
                str(obj["path"]),
                bool(obj.get("readonly", False)),
                bool(obj.get("anonymous", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"malformed mount record ({exc})") from exc


def normalize_target(text: str) -> str:
    """*text* as a clean absolute path (``.``, ``..`` and repeated ``/`` folded); not ``/``."""
    if not text.startswith("/"):
        raise ConfigError(f"volume target {text!r} is not an absolute path")
    parts: list[str] = []
    for part in text.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if not parts:
        raise ConfigError("a volume cannot be mounted over /")
    return "/" + "/".join(parts)


@contextlib.contextmanager
def image_view(lowers: Sequence[Lower]) -> Iterator[Stack | None]:
    """A read-only stack of an image's layers (None for an image without layers)."""
    if not lowers:
        yield None
        return
    with Stack(lowers) as view:
        yield view


def image_volumes(config: Mapping[str, Any]) -> list[str]:
    """The paths of the image config's ``Volumes`` (its anonymous volumes), sorted."""
    settings = config.get("config") or {}
    volumes = settings.get("Volumes") or {}
    if not isinstance(volumes, Mapping):
        raise StoreError("image config: Volumes is not an object")
    return sorted(str(path) for path in volumes)


def resolve_target(view: Stack | None, target: str) -> tuple[str, Stat | None]:
    """Resolve the absolute, normalised *target* in the read-only *view* of an image.

    Returns the path with every symlink resolved inside the image and what is there (None if
    nothing is: the runtime creates the missing directories). A *view* of None is an image
    without layers. Raises :class:`ConfigError` when a symlink leads above the image's root,
    a component is not a directory, or links nest deeper than :data:`MAX_SYMLINKS`.
    """
    todo = target.strip("/").split("/")[::-1]  # a stack of components: next one last
    done: list[str] = []
    found: Stat | None = None
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                raise ConfigError(f"volume target {target}: a symlink leads out of the image")
            done.pop()
            continue
        here = "/" + "/".join([*done, part])
        found = _lstat(view, here, target)
        if found is not None and stat.S_ISLNK(found.mode):
            assert view is not None
            links += 1
            if links > MAX_SYMLINKS:
                raise ConfigError(f"volume target {target}: too many levels of symbolic links")
            link = view.readlink(here)
            todo.extend(link.split("/")[::-1])
            if link.startswith("/"):
                done = []
            continue
        if found is not None and todo and not stat.S_ISDIR(found.mode):
            raise ConfigError(f"volume target {target}: {here} is not a directory in the image")
        done.append(part)
    if not done:
        raise ConfigError(f"volume target {target} resolves to / in the image")
    path = "/" + "/".join(done)
    return path, _lstat(view, path, target)


def _lstat(view: Stack | None, path: str, target: str) -> Stat | None:
    if view is None:
        return None
    try:
        return view.lstat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise ConfigError(f"volume target {target}: {path}: {exc.strerror}") from exc


def plan_mounts(
    view: Stack | None, requests: Sequence[MountRequest], image_paths: Iterable[str]
) -> list[Mount]:
    """The mounts of a new container: *requests*, then anonymous volumes at *image_paths*.

    Checks every target against the image (see :func:`resolve_target`), that a bind source
    exists on the host, that the kind of object matches (a volume needs a directory or
    nothing at its path) and that no two mounts share a path; an image volume whose path a
    request covers is dropped, as docker does. Anonymous volumes get fresh random names.
    Raises :class:`ConfigError`; creates nothing.
    """
    planned: list[Mount] = []
    for request in requests:
        planned.append(_plan_one(view, request))
        _check_unique(planned)
    asked = {m.path for m in planned}
    for text in image_paths:
        mount = _plan_one(view, MountRequest(MountKind.VOLUME, None, normalize_target(text)))
        if mount.path not in asked:
            planned.append(mount)
            _check_unique(planned)
    return planned


def _plan_one(view: Stack | None, request: MountRequest) -> Mount:
    path, found = resolve_target(view, request.target)
    source_is_dir = True
    if request.kind is MountKind.BIND:
        assert request.source is not None
        try:
            source_is_dir = stat.S_ISDIR(os.stat(request.source).st_mode)
        except OSError as exc:
            raise ConfigError(f"bind source {request.source}: {exc.strerror}") from exc
    if found is not None and stat.S_ISDIR(found.mode) != source_is_dir:
        detail = f"{path} is {_kind(stat.S_ISDIR(found.mode))} in the image"
        if request.kind is MountKind.BIND:
            detail += f", but the bind source {request.source} is {_kind(source_is_dir)}"
        raise ConfigError(f"volume target {request.target}: {detail}")
    anonymous = request.kind is MountKind.VOLUME and request.source is None
    source = secrets.token_hex(ANONYMOUS_NAME_BYTES) if anonymous else request.source
    assert source is not None
    return Mount(request.kind, source, request.target, path, request.readonly, anonymous)


def _kind(is_dir: bool) -> str:
    return "a directory" if is_dir else "not a directory"


def _check_unique(mounts: Sequence[Mount]) -> None:
    last = mounts[-1]
    for other in mounts[:-1]:
        if other.path == last.path:
            raise ConfigError(
                f"volume targets {other.target} and {last.target} are the same path {last.path}"
            )
