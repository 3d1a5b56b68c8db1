"""Containers: a writable upper and workdir over an image's unpacked layers.

Each container is ``containers/<id>/`` holding ``upper/``, ``work/`` and ``container.json``.
It is built in ``tmp/`` and renamed into place, and removed by renaming it back into ``tmp/``
before deleting, so a crash never leaves a half-made or half-deleted container under its name.
``container.json`` records the image's manifest digest and ``diff_ids``: gc keeps every blob
and unpacked layer a container needs even after its image lost all its tags. It also records
the container's mounts (:mod:`layerfs.store.mounts`): the volumes and bind mounts a runtime
mounts over its root, which is how a volume knows the containers that use it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerfs.errors import BadReferenceError, NotFoundError, StoreError
from layerfs.store.blobs import fsync_dir
from layerfs.store.images import now_rfc3339
from layerfs.store.layout import remove_dir
from layerfs.store.mounts import Mount
from layerfs.types import Digest

CONTAINER_JSON = "container.json"
ID_BYTES = 32  # a container id is 64 hex digits
SHORT_ID_LEN = 12
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Container:
    """A container's record and directories."""

    id: str
    name: str
    image: Digest
    image_ref: str | None
    diff_ids: tuple[Digest, ...]
    created: str
    path: Path
    mounts: tuple[Mount, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID_LEN]

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def work(self) -> Path:
        return self.path / "work"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "image_ref": self.image_ref,
            "diff_ids": list(self.diff_ids),
            "created": self.created,
            "mounts": [m.to_json() for m in self.mounts],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: Path) -> Container:
        try:
            return cls(
                id=str(obj["id"]),
                name=str(obj["name"]),
                image=Digest(str(obj["image"])),
                image_ref=obj.get("image_ref"),
                diff_ids=tuple(Digest(str(d)) for d in obj["diff_ids"]),
                created=str(obj["created"]),
                path=path,
                mounts=tuple(Mount.from_json(m) for m in obj.get("mounts") or ()),
            )
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{path / CONTAINER_JSON}: malformed ({exc})") from exc


class ContainerStore:
    """The ``containers/`` directory: create, list, find, remove. Callers hold the write lock."""

    def __init__(self, containers_dir: Path, tmp_dir: Path) -> None:
        self.dir = containers_dir
        self.tmp_dir = tmp_dir

    def list(self) -> list[Container]:
        """All containers, oldest first (then by name)."""
        found: list[Container] = []
        try:
            entries = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if _ID_RE.match(entry) and (self.dir / entry / CONTAINER_JSON).is_file():
                found.append(self._load(self.dir / entry))
        return sorted(found, key=lambda c: (c.created, c.name))

    def get(self, name_or_id: str) -> Container:
        """By exact name, full id or unique id prefix; :class:`NotFoundError` otherwise."""
        containers = self.list()
        for container in containers:
            if name_or_id in (container.name, container.id):
                return container
        if re.fullmatch(r"[0-9a-f]{4,63}", name_or_id):
            matches = [c for c in containers if c.id.startswith(name_or_id)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"container id prefix {name_or_id!r} is ambiguous")
        raise NotFoundError(f"no such container: {name_or_id}")

    def check_name(self, name: str) -> None:
        """Raise unless *name* is a valid container name that no container has."""
        if not NAME_RE.match(name):
            raise BadReferenceError(f"invalid container name {name!r}")
        if any(c.name == name for c in self.list()):
            raise StoreError(f"container name {name!r} is already in use")

    def create(
        self,
        image: Digest,
        image_ref: str | None,
        diff_ids: Sequence[Digest],
        name: str | None,
        mounts: Sequence[Mount] = (),
    ) -> Container:
        """Make a container's directories and record, appearing under ``containers/`` whole."""
        container_id = secrets.token_hex(ID_BYTES)
        if name is None:
            name = f"c-{container_id[:SHORT_ID_LEN]}"
        self.check_name(name)
        staging = Path(tempfile.mkdtemp(prefix="container-", dir=self.tmp_dir))
        os.chmod(staging, 0o700)
        (staging / "upper").mkdir(mode=0o755)
        (staging / "work").mkdir(mode=0o700)
        final = self.dir / container_id
        container = Container(
            container_id,
            name,
            image,
            image_ref,
            tuple(diff_ids),
            now_rfc3339(),
            final,
            tuple(mounts),
        )
        record = staging / CONTAINER_JSON
        record.write_text(json.dumps(container.to_json(), indent=2) + "\n")
        with record.open("rb") as handle:
            os.fsync(handle.fileno())
        self.dir.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        fsync_dir(self.dir)
        return container

    def remove(self, container: Container) -> None:
        """Delete a container: renamed out of ``containers/`` first, then removed from ``tmp/``."""
        remove_dir(container.path, self.tmp_dir)

    def _load(self, path: Path) -> Container:
        try:
            obj = json.loads((path / CONTAINER_JSON).read_bytes())
        except ValueError as exc:
            raise StoreError(f"{path / CONTAINER_JSON}: invalid JSON") from exc
        if not isinstance(obj, dict):
            raise StoreError(f"{path / CONTAINER_JSON}: expected an object")
        return Container.from_json(obj, path)
