"""Volumes: directories of container data that live outside the layered storage.

::

    ROOT/volumes/<name>/
      volume.json     {"name", "anonymous", "labels", "created"}
      data/           the volume's content, bind-mounted at the container's path

A volume is *named* (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``, at most 128 characters) or *anonymous*
(64 random hex digits, made for a path of the image config's ``Volumes`` or for ``-v /path``).
Which containers use a volume is read from the containers' records, the one place that says
so: a volume's reference count is the number of containers whose mounts name it, and no crash
can leave a count that disagrees with the containers.

Crash safety as for containers: a volume is built in ``tmp/`` and renamed into ``volumes/``,
and removed by renaming it into ``tmp/`` first. Its first content (a copy of the image's
content at its path, :mod:`layerfs.store.populate`) is built in ``tmp/`` too and swapped with
the empty ``data/`` by ``renameat2(RENAME_EXCHANGE)``: a volume is empty or holds the whole
copy. :class:`VolumeDir` does the directory work with the store's write lock held by its
caller; :class:`Volumes` (``Store.volumes``) is the public API and takes the lock itself.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerfs import hostfs
from layerfs.errors import NotFoundError, StoreError
from layerfs.progress import Progress, task
from layerfs.store.blobs import atomic_file, fsync_dir
from layerfs.store.images import now_rfc3339
from layerfs.store.layout import remove_dir
from layerfs.store.mounts import (
    ANONYMOUS_NAME_BYTES,
    VOLUME_NAME_RE,
    Mount,
    MountKind,
    check_volume_name,
)
from layerfs.store.populate import copy_tree

if TYPE_CHECKING:
    from layerfs.stack import Stack
    from layerfs.store.containers import Container

log = logging.getLogger(__name__)

VOLUME_JSON = "volume.json"
DATA_DIR = "data"


@dataclass(frozen=True, slots=True)
class Volume:
    """A volume's record; its content is the directory :attr:`data`."""

    name: str
    anonymous: bool
    labels: Mapping[str, str] = field(hash=False)
    created: str
    path: Path

    @property
    def data(self) -> Path:
        """The directory a runtime bind-mounts into the container."""
        return self.path / DATA_DIR

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "anonymous": self.anonymous,
            "labels": dict(self.labels),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: Path) -> Volume:
        try:
            labels = obj.get("labels") or {}
            return cls(
                name=str(obj["name"]),
                anonymous=bool(obj["anonymous"]),
                labels={str(k): str(v) for k, v in labels.items()},
                created=str(obj["created"]),
                path=path,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{path / VOLUME_JSON}: malformed ({exc})") from exc


class VolumeDir:
    """The ``volumes/`` directory: create, list, find, fill and remove volumes.

    Callers hold the store's write lock for every method that changes something.
    """

    def __init__(self, volumes_dir: Path, tmp_dir: Path) -> None:
        self.dir = volumes_dir
        self.tmp_dir = tmp_dir

    def list(self) -> list[Volume]:
        """All volumes, sorted by name."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        found = (self.find(name) for name in names if VOLUME_NAME_RE.match(name))
        return [v for v in found if v is not None]

    def find(self, name: str) -> Volume | None:
        """The volume called *name*, or None."""
        path = self.dir / name
        try:
            obj = json.loads((path / VOLUME_JSON).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError as exc:
            raise StoreError(f"{path / VOLUME_JSON}: invalid JSON") from exc
        if not isinstance(obj, dict):
            raise StoreError(f"{path / VOLUME_JSON}: expected an object")
        return Volume.from_json(obj, path)

    def get(self, name: str) -> Volume:
        """The volume called *name*; :class:`NotFoundError` otherwise."""
        volume = self.find(check_volume_name(name))
        if volume is None:
            raise NotFoundError(f"no such volume: {name}")
        return volume

    def create(self, name: str, labels: Mapping[str, str], *, anonymous: bool) -> Volume:
        """Make an empty volume, appearing under ``volumes/`` whole."""
        check_volume_name(name)
        if self.find(name) is not None:
            raise StoreError(f"volume {name!r} already exists")
        staging = Path(tempfile.mkdtemp(prefix="volume-", dir=self.tmp_dir))
        try:
            os.chmod(staging, 0o700)
            (staging / DATA_DIR).mkdir(mode=0o755)
            volume = Volume(name, anonymous, dict(labels), now_rfc3339(), self.dir / name)
            with atomic_file(staging / VOLUME_JSON, self.tmp_dir) as out:
                out.write((json.dumps(volume.to_json(), indent=2) + "\n").encode())
            fsync_dir(staging)
            self.dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, volume.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.dir)
        return volume

    def remove(self, volume: Volume) -> None:
        """Delete a volume: renamed out of ``volumes/`` first, then removed from ``tmp/``."""
        remove_dir(volume.path, self.tmp_dir)

    def is_empty(self, volume: Volume) -> bool:
        with os.scandir(volume.data) as entries:
            return next(entries, None) is None

    def fill(self, volume: Volume, make: Callable[[Path], None]) -> bool:
        """Give an empty volume its first content: *make* builds it in ``tmp/``, then swap.

        *make* is called with a path that does not exist yet and must create the new ``data``
        directory there, durably. Returns False (and discards the copy) if the volume was not
        empty at the moment of the swap: its content is never replaced.
        """
        staging = Path(tempfile.mkdtemp(prefix="fill-", dir=self.tmp_dir))
        try:
            make(staging / DATA_DIR)
            if not self.is_empty(volume):
                return False
            return self._swap(staging, volume)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _swap(self, staging: Path, volume: Volume) -> bool:
        new_fd = os.open(staging, hostfs.O_PATH_DIR)
        vol_fd = os.open(volume.path, hostfs.O_PATH_DIR)
        try:
            hostfs.rename_at(new_fd, DATA_DIR, vol_fd, DATA_DIR, hostfs.RENAME_EXCHANGE)
            try:
                os.rmdir(DATA_DIR, dir_fd=new_fd)  # the old, empty data directory
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                # written to between the check and the swap: put that content back
                hostfs.rename_at(new_fd, DATA_DIR, vol_fd, DATA_DIR, hostfs.RENAME_EXCHANGE)
                return False
            fsync_dir(volume.path)
            return True
        finally:
            os.close(new_fd)
            os.close(vol_fd)


class Volumes:
    """The volumes of a store (``Store.volumes``): every method takes the store's lock."""

    def __init__(
        self,
        volume_dir: VolumeDir,
        containers: Callable[[], builtins.list[Container]],
        writing: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self.dir = volume_dir
        self._containers = containers
        self._writing = writing

    def list(self) -> builtins.list[Volume]:
        """Every volume, sorted by name."""
        return self.dir.list()

    def get(self, name: str) -> Volume:
        """The volume called *name*; :class:`NotFoundError` otherwise."""
        return self.dir.get(name)

    def users(self, volume: str | Volume) -> builtins.list[Container]:
        """The containers whose mounts name the volume (its references), oldest first."""
        name = volume.name if isinstance(volume, Volume) else volume
        return [c for c in self._containers() if name in volume_names(c.mounts)]

    def describe(self, volume: str | Volume) -> dict[str, Any]:
        """A JSON-ready description: the record, ``path`` (the data) and ``containers``
        (the names of the containers that use it)."""
        found = volume if isinstance(volume, Volume) else self.get(volume)
        return _described(found, self.users(found))

    def describe_all(self) -> builtins.list[dict[str, Any]]:
        """:meth:`describe` of every volume, sorted by name, reading the containers once."""
        containers = self._containers()
        return [
            _described(v, [c for c in containers if v.name in volume_names(c.mounts)])
            for v in self.dir.list()
        ]

    def create(self, name: str | None = None, labels: Mapping[str, str] | None = None) -> Volume:
        """A new, empty named volume (a random 64-hex name when *name* is None).

        Raises :class:`BadReferenceError` for a bad name, :class:`StoreError` if it exists.
        """
        with self._writing():
            chosen = name if name is not None else secrets.token_hex(ANONYMOUS_NAME_BYTES)
            return self.dir.create(chosen, labels or {}, anonymous=False)

    def remove(self, name: str) -> Volume:
        """Delete a volume and its data; :class:`StoreError` while a container uses it."""
        with self._writing():
            volume = self.dir.get(name)
            self._check_unused(volume)
            self.dir.remove(volume)
            return volume

    def prune(self, *, all: bool = False) -> builtins.list[Volume]:
        """Delete the volumes no container uses: anonymous ones, and named ones too with *all*."""
        with self._writing():
            used: set[str] = set()
            for container in self._containers():
                used.update(volume_names(container.mounts))
            removed: builtins.list[Volume] = []
            for volume in self.dir.list():
                if volume.name not in used and (all or volume.anonymous):
                    self.dir.remove(volume)
                    removed.append(volume)
            return removed

    def _check_unused(self, volume: Volume) -> None:
        users = self.users(volume)
        if users:
            names = ", ".join(c.name for c in users)
            raise StoreError(f"volume {volume.name} is in use by container {names}")

    # -- for the store's container methods (the caller holds the lock) ------------------------

    def source(self, mount: Mount) -> Path:
        """The host directory (or file) *mount* binds: a volume's data, or the host path."""
        if mount.kind is MountKind.BIND:
            return Path(mount.source)
        return self.dir.get(mount.source).data

    def attach(
        self, mounts: Sequence[Mount], view: Stack | None, progress: Progress | None = None
    ) -> builtins.list[Volume]:
        """Make the volumes *mounts* name that do not exist yet, and give each empty volume
        that no container uses yet a copy of what the image (*view*) holds at its path.

        Returns the volumes created, for :meth:`discard` should the container not be made.
        """
        created: builtins.list[Volume] = []
        try:
            in_use: set[str] = set()
            for container in self._containers():
                in_use.update(volume_names(container.mounts))
            for mount in mounts:
                if mount.kind is not MountKind.VOLUME:
                    continue
                volume = self.dir.find(mount.source)
                if volume is None:
                    volume = self.dir.create(mount.source, {}, anonymous=mount.anonymous)
                    created.append(volume)
                if volume.name not in in_use and view is not None:
                    self._populate(volume, mount, view, progress)
                in_use.add(volume.name)
        except BaseException:
            self.discard(created)
            raise
        return created

    def _populate(
        self, volume: Volume, mount: Mount, view: Stack, progress: Progress | None
    ) -> None:
        if not self.dir.is_empty(volume):
            return
        try:
            if not stat.S_ISDIR(view.lstat(mount.path).mode):
                return
        except FileNotFoundError:
            return
        with task(progress, f"copying {mount.path} into volume {volume.name[:24]}", None) as report:
            self.dir.fill(volume, lambda dest: copy_tree(view, mount.path, dest, report))

    def discard(self, volumes: Sequence[Volume]) -> None:
        """Remove volumes made for a container that was not created after all."""
        for volume in volumes:
            with contextlib.suppress(OSError):
                self.dir.remove(volume)

    def release(self, container: Container) -> builtins.list[Volume]:
        """After *container* is gone: remove its anonymous volumes no other container uses."""
        removed: builtins.list[Volume] = []
        for mount in container.mounts:
            if not mount.anonymous:
                continue
            volume = self.dir.find(mount.source)
            if volume is None:
                continue
            if self.users(volume):
                log.info("volume %s is still in use; kept", volume.name)
                continue
            self.dir.remove(volume)
            removed.append(volume)
        return removed


def _described(volume: Volume, users: Sequence[Container]) -> dict[str, Any]:
    return {**volume.to_json(), "path": str(volume.data), "containers": [c.name for c in users]}


def volume_names(mounts: Sequence[Mount]) -> Iterator[str]:
    """The names of the volumes among *mounts*."""
    return (m.source for m in mounts if m.kind is MountKind.VOLUME)
