"""Owners stored in the layers versus owners shown through the mount: id mappings and squashing.

containers-storage hands a container's id mappings to its mount program as
``uidmapping=C:H:N[:C:H:N...]`` and ``gidmapping=...`` (container id, host id, count; podman 4
writes a leading ``:``), or as ``squash_to_uid=H`` / ``squash_to_gid=H`` when a mapping holds a
single id. The layers store ids as the container sees them; the mount reports container id
``C+k`` as host id ``H+k``, so that the kernel, mapping host ids back through the container's
user namespace, shows the container the stored ids. Requests carry host ids (the caller as the
mount's user namespace sees it) and are mapped back before anything is created or chowned. An
id outside every range is shown, and stored, as the overflow id (``nobody``). This is what
fuse-overlayfs does with the same options.

``squash_to_root``, ``squash_to_uid=N`` and ``squash_to_gid=N`` show every object as owned by
0 or N (for the ids they name) whatever is stored; a chown that the host refuses is then
ignored instead of failing, again as fuse-overlayfs does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from layerfs.errors import ConfigError

if TYPE_CHECKING:
    from layerfs.types import Stat

R = TypeVar("R")

OVERFLOW_UID = Path("/proc/sys/kernel/overflowuid")
OVERFLOW_GID = Path("/proc/sys/kernel/overflowgid")
NOBODY = 65534
OWNER_KEYS = ("uid", "gid")


@dataclass(frozen=True, slots=True)
class IdRange:
    """``count`` ids from ``stored`` (in the layers) shown as ids from ``shown`` (the host's)."""

    stored: int
    shown: int
    count: int


@dataclass(frozen=True, slots=True)
class IdMap:
    """How owners are shown and stored; empty ranges map ids to themselves."""

    uids: tuple[IdRange, ...] = ()
    gids: tuple[IdRange, ...] = ()
    squash_uid: int | None = None
    squash_gid: int | None = None
    overflow_uid: int = NOBODY
    overflow_gid: int = NOBODY

    @property
    def squashes(self) -> bool:
        return self.squash_uid is not None or self.squash_gid is not None

    def show(self, st: Stat) -> Stat:
        """*st* with its owner as the mount shows it."""
        uid = self.squash_uid
        if uid is None:
            uid = _shown(self.uids, st.uid, self.overflow_uid)
        gid = self.squash_gid
        if gid is None:
            gid = _shown(self.gids, st.gid, self.overflow_gid)
        return st if (uid, gid) == (st.uid, st.gid) else st._replace(uid=uid, gid=gid)

    def stored_uid(self, uid: int) -> int:
        """The uid to store for the host uid *uid* of a request."""
        return _stored(self.uids, uid, self.overflow_uid)

    def stored_gid(self, gid: int) -> int:
        return _stored(self.gids, gid, self.overflow_gid)

    def stored_changes(self, changes: dict[str, int]) -> dict[str, int]:
        """``Stack.setattr`` keywords with their ``uid``/``gid`` mapped to stored ids."""
        mapped = dict(changes)
        if "uid" in mapped:
            mapped["uid"] = self.stored_uid(mapped["uid"])
        if "gid" in mapped:
            mapped["gid"] = self.stored_gid(mapped["gid"])
        return mapped

    def apply_changes(self, apply: Callable[[dict[str, int]], R], changes: dict[str, int]) -> R:
        """Run ``apply(changes)``; when squashing, a refused chown leaves the owner as it is.

        The owner change is dropped (and the rest applied) only on ``EPERM`` from a request
        that changed the owner; every other error propagates.
        """
        try:
            return apply(changes)
        except PermissionError:
            if not self.squashes or not any(key in changes for key in OWNER_KEYS):
                raise
        return apply({k: v for k, v in changes.items() if k not in OWNER_KEYS})


def _shown(ranges: tuple[IdRange, ...], stored: int, overflow: int) -> int:
    if not ranges:
        return stored
    for r in ranges:
        if r.stored <= stored < r.stored + r.count:
            return r.shown + (stored - r.stored)
    return overflow


def _stored(ranges: tuple[IdRange, ...], shown: int, overflow: int) -> int:
    if not ranges:
        return shown
    for r in ranges:
        if r.shown <= shown < r.shown + r.count:
            return r.stored + (shown - r.shown)
    return overflow


def parse_ranges(key: str, text: str) -> tuple[IdRange, ...]:
    """``C:H:N[:C:H:N...]`` (empty fields skipped, as podman 4 writes a leading ``:``)."""
    fields = [f for f in text.split(":") if f]
    if not fields or len(fields) % 3:
        raise ConfigError(f"mount option {key}= needs CONTAINER:HOST:COUNT triples, not {text!r}")
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise ConfigError(f"mount option {key}= takes numbers: {text!r}") from None
    if any(n < 0 for n in numbers) or any(n == 0 for n in numbers[2::3]):
        raise ConfigError(f"mount option {key}= needs ids >= 0 and counts >= 1: {text!r}")
    return tuple(IdRange(*numbers[i : i + 3]) for i in range(0, len(numbers), 3))


def parse_id(key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"mount option {key}= takes a numeric id, not {text!r}") from None
    if value < 0:
        raise ConfigError(f"mount option {key}= takes an id >= 0, not {text!r}")
    return value


def build_idmap(options: dict[str, str], squash_to_root: bool) -> IdMap | None:
    """The :class:`IdMap` for the id options among *options* (None when there are none).

    *options* maps ``uidmapping``, ``gidmapping``, ``squash_to_uid``, ``squash_to_gid`` to
    their values. Raises :class:`ConfigError` for a malformed one.
    """
    if not options and not squash_to_root:
        return None
    squash_uid = 0 if squash_to_root else None
    squash_gid = 0 if squash_to_root else None
    if "squash_to_uid" in options:
        squash_uid = parse_id("squash_to_uid", options["squash_to_uid"])
    if "squash_to_gid" in options:
        squash_gid = parse_id("squash_to_gid", options["squash_to_gid"])
    uids = parse_ranges("uidmapping", options["uidmapping"]) if "uidmapping" in options else ()
    gids = parse_ranges("gidmapping", options["gidmapping"]) if "gidmapping" in options else ()
    return IdMap(
        uids, gids, squash_uid, squash_gid, _overflow(OVERFLOW_UID), _overflow(OVERFLOW_GID)
    )


def _overflow(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return NOBODY
