"""Writes the generated layouts to disk once per work directory, with their merged copies.

Each stack lives in ``<workdir>/stacks/<name>/``: ``layers/0`` is the bottom layer, ``flat/``
is the merged view written as a plain directory (the baseline every union is compared with).
Whiteouts are 0/0 character devices and opaque directories carry the ``trusted`` opaque xattr,
the encodings kernel overlayfs, fuse-overlayfs and layerfs all read. A stack whose
``stamp.json`` matches the current sizes and seed is reused, so repeated runs in one
``--workdir`` do not regenerate a gigabyte.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import layout
from benchmarks.config import MIB, Sizes
from layerfs.whiteout import OPAQUE_VALUE, UpperFormat

STACK_NAMES = ("wide", "deep", "huge", "big", "mut")
GENERATOR_VERSION = 1  # bump when a layout changes, so old work directories are rebuilt
WRITE_CHUNK = 4 * MIB  # bytes


@dataclass(frozen=True, slots=True)
class BuiltStack:
    """A stack on disk. ``layers`` are bottom first; paths below are relative to a root."""

    name: str
    root: Path
    layers: tuple[Path, ...]
    flat: Path
    files: tuple[str, ...]
    dirs: tuple[str, ...]
    targets: tuple[str, ...]

    def lowers(self, depth: int | None = None) -> list[Path]:
        """The lower layers of a mount, top-most first (the order overlayfs options use)."""
        chosen = self.layers if depth is None else self.layers[:depth]
        return list(reversed(chosen))


def build(name: str, sizes: Sizes, seed: int, workdir: Path) -> BuiltStack:
    """Build stack *name* under *workdir*, or reuse a complete earlier build of the same one."""
    layers, targets, flat_from_bottom = _describe(name, sizes, seed)
    root = workdir / "stacks" / name
    merged = layout.merge(layers)
    stamp = json.dumps(
        {"version": GENERATOR_VERSION, "sizes": asdict(sizes), "seed": seed}, sort_keys=True
    )
    stamp_path = root / "stamp.json"
    if not (stamp_path.exists() and stamp_path.read_text() == stamp):
        shutil.rmtree(root, ignore_errors=True)
        _write_layers(root, layers)
        if not flat_from_bottom:
            _write_flat(root, merged)
        stamp_path.write_text(stamp)
    layer_paths = tuple(root / "layers" / str(i) for i in range(len(layers)))
    return BuiltStack(
        name=name,
        root=root,
        layers=layer_paths,
        flat=layer_paths[0] if flat_from_bottom else root / "flat",
        files=tuple(sorted(merged.files)),
        dirs=tuple(sorted(merged.dirs)),
        targets=tuple(targets),
    )


def _describe(name: str, sizes: Sizes, seed: int) -> tuple[list[layout.LayerSpec], list[str], bool]:
    """Layers, the paths workloads aim at, and whether the bottom layer serves as the flat tree.

    For *deep* the plain baseline is the bottom layer itself: it holds every looked-up file.
    """
    if name == "wide":
        return layout.wide(sizes, seed), [], False
    if name == "deep":
        layers, targets = layout.deep(sizes)
        return layers, targets, True
    if name == "huge":
        return layout.huge(sizes), ["huge"], False
    if name == "big":
        return layout.big(sizes, seed), ["big.bin"], False
    if name == "mut":
        layers, smalls = layout.mut(sizes, seed)
        return layers, [layout.MUT_BLOB, *smalls], False
    raise ValueError(f"unknown stack {name!r}")


def _write_layers(root: Path, layers: list[layout.LayerSpec]) -> None:
    opaque_xattr = UpperFormat().opaque_xattr
    for index, spec in enumerate(layers):
        base = root / "layers" / str(index)
        base.mkdir(parents=True)
        for d in sorted(spec.dirs):
            (base / d).mkdir(parents=True, exist_ok=True)
        for path, file in sorted(spec.files.items()):
            write_file(base / path, file)
        for path in sorted(spec.whiteouts):
            (base / path).parent.mkdir(parents=True, exist_ok=True)
            os.mknod(base / path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        for path in sorted(spec.opaque):
            (base / path).mkdir(parents=True, exist_ok=True)
            os.setxattr(base / path, opaque_xattr, OPAQUE_VALUE)


def _write_flat(root: Path, merged: layout.Merged) -> None:
    flat = root / "flat"
    flat.mkdir(parents=True)
    for d in sorted(merged.dirs):
        (flat / d).mkdir(parents=True, exist_ok=True)
    for path, (index, _spec) in sorted(merged.files.items()):
        shutil.copyfile(root / "layers" / str(index) / path, flat / path)


def write_file(path: Path, spec: layout.FileSpec) -> None:
    """Write *spec*'s deterministic content: ``random.Random(seed)`` bytes, in chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    with open(path, "wb") as out:
        left = spec.size
        while left > 0:
            chunk = min(left, WRITE_CHUNK)
            out.write(rng.randbytes(chunk))
            left -= chunk
