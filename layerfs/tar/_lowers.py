"""The merged view of a stack of lower directories, as overlayfs would show it.

Used where a change set needs to know what lies below an upper: the data of a metacopy file,
and whether a path is new or changed. Lookup walks down component by component, keeping for
each level the lower directories that still merge (top-most first): a whiteout stops the
descent, a non-directory hides everything below it, an opaque directory hides the lowers under
it. Both whiteout encodings are understood in every lower.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from layerfs import hostfs
from layerfs.tar._upper import METACOPY_XATTRS, has_opaque_xattr, proc_path, xattr_names
from layerfs.whiteout import OPAQUE_MARKER, is_whiteout_stat, whiteout_file_name

_CACHE_LIMIT = 512  # directories whose lower descriptors are kept open


@dataclass(frozen=True, slots=True)
class Found:
    """The top-most visible object at a path: its lower's index, parent descriptor and stat."""

    layer: int
    parent_fd: int
    name: str
    st: os.stat_result


class LowerView:
    """Read-only lookups in lowers given top-most first; a context manager closing its fds."""

    def __init__(self, lowers: Sequence[os.PathLike[str] | str]) -> None:
        self._roots = [hostfs.open_root(p) for p in lowers]
        self._dirs: dict[str, list[tuple[int, int]]] = {}

    def __enter__(self) -> LowerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._drop_cache()
        for fd in self._roots:
            os.close(fd)
        self._roots = []

    def _drop_cache(self) -> None:
        for layers in self._dirs.values():
            for _, fd in layers:
                os.close(fd)
        self._dirs.clear()

    def _merged_dir(self, path: str) -> list[tuple[int, int]]:
        """(layer index, O_PATH fd) of each lower directory merged at *path*, top-most first."""
        cached = self._dirs.get(path)
        if cached is not None:
            return cached
        if not path:
            return [(i, fd) for i, fd in enumerate(self._roots)]
        parent, _, name = path.rpartition("/")
        layers: list[tuple[int, int]] = []
        for i, parent_fd in self._merged_dir(parent):
            st = hostfs.lstat_or_none(parent_fd, name)
            if st is None:
                if _whited_out(parent_fd, name):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a whiteout or a non-directory hides the lowers below
            fd = os.open(name, hostfs.O_PATH_DIR, dir_fd=parent_fd)
            layers.append((i, fd))
            if _is_opaque(fd):
                break
        self._dirs[path] = layers
        return layers

    def _start(self) -> None:
        if len(self._dirs) > _CACHE_LIMIT:
            self._drop_cache()

    def lookup(self, path: str) -> Found | None:
        """The top-most visible object at *path* ("a/b", relative), or None."""
        self._start()
        parent, _, name = path.rpartition("/")
        for i, parent_fd in self._merged_dir(parent):
            st = hostfs.lstat_or_none(parent_fd, name)
            if st is None:
                if _whited_out(parent_fd, name):
                    return None
                continue
            if is_whiteout_stat(st):
                return None
            return Found(i, parent_fd, name, st)
        return None

    def data_source(self, path: str) -> Found | None:
        """The top-most regular file at *path* holding data (not itself a metacopy)."""
        self._start()
        parent, _, name = path.rpartition("/")
        for i, parent_fd in self._merged_dir(parent):
            st = hostfs.lstat_or_none(parent_fd, name)
            if st is None:
                if _whited_out(parent_fd, name):
                    return None
                continue
            if not stat.S_ISREG(st.st_mode):
                return None
            with hostfs.opath(parent_fd, name) as p:
                if any(x in METACOPY_XATTRS for x in xattr_names(p)):
                    continue
            return Found(i, parent_fd, name, st)
        return None

    def listdir(self, path: str) -> list[str]:
        """The names visible in the merged lower directory *path*, sorted."""
        self._start()
        found = self.lookup(path) if path else None
        if found is not None and not stat.S_ISDIR(found.st.st_mode):
            return []
        hidden: set[str] = set()
        names: set[str] = set()
        for _, fd in self._merged_dir(path):
            for name in os.listdir(proc_path(fd)):
                if name == OPAQUE_MARKER or name in names or name in hidden:
                    continue
                if name.startswith(".wh."):
                    hidden.add(name[4:])
                    continue
                if is_whiteout_stat(hostfs.lstat_at(fd, name)):
                    hidden.add(name)
                    continue
                names.add(name)
        return sorted(names, key=os.fsencode)


def _whited_out(parent_fd: int, name: str) -> bool:
    return hostfs.lstat_or_none(parent_fd, whiteout_file_name(name)) is not None


def _is_opaque(dir_fd: int) -> bool:
    if hostfs.lstat_or_none(dir_fd, OPAQUE_MARKER) is not None:
        return True
    return has_opaque_xattr(proc_path(dir_fd))
