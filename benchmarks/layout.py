"""Seeded descriptions of the benchmark stacks, and the merged view they must produce.

A layout is pure data: for each layer (bottom first) the directories, regular files, whiteouts
and opaque directories it holds. :func:`merge` computes the tree a correct union filesystem
shows, which serves twice: the plain-directory baseline is written from it, and every workload
checks that a system returned exactly that many entries, so a broken mount cannot pass for a
fast one. Generation depends only on the sizes and the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from benchmarks.config import Sizes

SIZE_CHOICES = (0, 64, 512, 2048, 4096, 8192, 16384, 65536)  # bytes
SIZE_WEIGHTS = (2, 10, 20, 25, 20, 12, 8, 3)
EXTENSIONS = ("", ".txt", ".py", ".so", ".json")
OVERRIDE_SHARE = 0.05  # of bottom-layer files, rewritten in a higher layer
WHITEOUT_SHARE = 0.02  # of files, deleted by a whiteout in a higher layer
DEEP_FANOUT = 10  # leaf directories that hold the bottom-layer files of *deep*


@dataclass(frozen=True, slots=True)
class FileSpec:
    """A regular file: its size and the seed of its (pseudo-random) content."""

    size: int
    seed: int


@dataclass(slots=True)
class LayerSpec:
    """One layer. Paths are relative, ``/``-separated, without a leading slash."""

    dirs: set[str] = field(default_factory=set)
    files: dict[str, FileSpec] = field(default_factory=dict)
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Merged:
    """The union view: each visible file with the index of the layer it comes from."""

    dirs: frozenset[str]
    files: dict[str, tuple[int, FileSpec]]


def parents(path: str) -> list[str]:
    """The proper ancestors of a relative path, outermost first (``a``, ``a/b`` for ``a/b/c``)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _drop_under(prefix: str, dirs: set[str], files: dict[str, tuple[int, FileSpec]]) -> None:
    start = prefix + "/"
    for d in [d for d in dirs if d.startswith(start)]:
        dirs.discard(d)
    for f in [f for f in files if f.startswith(start)]:
        del files[f]


def merge(layers: list[LayerSpec]) -> Merged:
    """Apply *layers* bottom first: opaque directories, then whiteouts, then new entries."""
    dirs: set[str] = set()
    files: dict[str, tuple[int, FileSpec]] = {}
    for index, layer in enumerate(layers):
        for opaque in layer.opaque:
            _drop_under(opaque, dirs, files)
        for gone in layer.whiteouts:
            dirs.discard(gone)
            files.pop(gone, None)
            _drop_under(gone, dirs, files)
        for d in layer.dirs:
            dirs.add(d)
            dirs.update(parents(d))
        for path, spec in layer.files.items():
            dirs.update(parents(path))
            files[path] = (index, spec)
    return Merged(frozenset(dirs), files)


def wide(sizes: Sizes, seed: int) -> list[LayerSpec]:
    """A few hundred directories, many small files, overrides, whiteouts and one opaque dir."""
    rng = random.Random(seed)
    layers = [LayerSpec() for _ in range(sizes.wide_layers)]
    groups = max(1, sizes.wide_dirs // 15)
    dirs = [f"g{g:02d}/s{s:02d}" for g in range(groups) for s in range(15)]
    layers[0].dirs.update(dirs)
    origin: dict[str, int] = {}
    for i in range(sizes.wide_files):
        path = f"{rng.choice(dirs)}/f{i:05d}{rng.choice(EXTENSIONS)}"
        index = 0 if rng.random() < 0.7 else rng.randrange(1, len(layers))
        layers[index].files[path] = _file(rng)
        origin[path] = index
    top = len(layers) - 1
    bottom_files = sorted(p for p, i in origin.items() if i == 0)
    overridden = rng.sample(bottom_files, int(len(bottom_files) * OVERRIDE_SHARE))
    for path in overridden:
        layers[rng.randrange(1, len(layers))].files[path] = _file(rng)
    candidates = sorted(p for p, i in origin.items() if i < top and p not in set(overridden))
    for path in rng.sample(candidates, int(len(origin) * WHITEOUT_SHARE)):
        layers[rng.randrange(origin[path] + 1, len(layers))].whiteouts.add(path)
    opaque_dir, opaque_layer = dirs[1], min(2, top)
    layers[opaque_layer].opaque.add(opaque_dir)
    layers[opaque_layer].whiteouts -= {
        w for w in layers[opaque_layer].whiteouts if w.startswith(opaque_dir + "/")
    }
    for j in range(5):
        layers[opaque_layer].files[f"{opaque_dir}/opaque{j}"] = _file(rng)
    return layers


def deep(sizes: Sizes) -> tuple[list[LayerSpec], list[str]]:
    """*max depth* layers sharing one directory skeleton; the looked-up files are in the bottom.

    Every upper layer holds the same directories plus one filler file per leaf, so each
    directory on the way is a merged directory that a union filesystem has to look up in every
    layer before it finds the file at the bottom. Returns the layers and the looked-up paths.
    """
    leaves = [f"t/a{k}/b/c" for k in range(DEEP_FANOUT)]
    layers = [LayerSpec(dirs=set(leaves)) for _ in range(max(sizes.deep_depths))]
    targets = [f"{leaves[i % DEEP_FANOUT]}/f{i:05d}" for i in range(sizes.deep_files)]
    for path in targets:
        layers[0].files[path] = FileSpec(0, 0)
    for index, layer in enumerate(layers[1:], start=1):
        for leaf in leaves:
            layer.files[f"{leaf}/x{index:03d}"] = FileSpec(0, 0)
    return layers, targets


def huge(sizes: Sizes) -> list[LayerSpec]:
    """One directory, ``huge/``, whose entries are spread round-robin over the layers."""
    layers = [LayerSpec(dirs={"huge"}) for _ in range(sizes.huge_layers)]
    for i in range(sizes.huge_entries):
        layers[i % len(layers)].files[f"huge/e{i:06d}"] = FileSpec(0, 0)
    return layers


def big(sizes: Sizes, seed: int) -> list[LayerSpec]:
    """One large file in the bottom layer under a small second layer."""
    bottom = LayerSpec(files={"big.bin": FileSpec(sizes.big_bytes, seed)})
    top = LayerSpec(files={"README": FileSpec(512, seed + 1)})
    return [bottom, top]


MUT_BLOB = "data/blob.bin"
MUT_FILES_DIR = "files"
MUT_CREATE_DIR = "new"


def mut(sizes: Sizes, seed: int) -> tuple[list[LayerSpec], list[str]]:
    """Lower files to modify: a large blob, small files to unlink or rename, a dir to fill."""
    rng = random.Random(seed)
    bottom = LayerSpec(dirs={MUT_CREATE_DIR})
    bottom.files[MUT_BLOB] = FileSpec(sizes.mut_big_bytes, seed)
    smalls = [f"{MUT_FILES_DIR}/m{i:05d}" for i in range(sizes.mut_files)]
    for path in smalls:
        bottom.files[path] = FileSpec(1024, rng.randrange(1 << 30))
    bottom.files[f"{MUT_CREATE_DIR}/keep"] = FileSpec(64, 1)
    top = LayerSpec(files={"data/note": FileSpec(128, 2), f"{MUT_FILES_DIR}/top": FileSpec(128, 3)})
    return [bottom, top], smalls


def _file(rng: random.Random) -> FileSpec:
    size = rng.choices(SIZE_CHOICES, SIZE_WEIGHTS)[0]
    return FileSpec(size, rng.randrange(1 << 30))
