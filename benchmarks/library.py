"""In-process library benchmarks: applying an OCI layer and creating a zstd layer.

*apply* unpacks one gzip layer blob (built by umoci from the merged *wide* tree) three ways:
``layerfs.tar.apply_layer`` in this process, ``umoci raw unpack`` and GNU ``tar -xf``. *mklayer*
turns the same tree into a zstd-compressed tar: ``layerfs.tar.create_layer`` against
``tar -cf - . | zstd -T0``. Each repetition writes to a new destination; the systems rotate
as in the mount benchmarks. No tool's output is synced before its timer stops. The cache
state is *warm*: the inputs were read moments before.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from benchmarks.config import RunConfig
from benchmarks.results import Recorder, Sample
from benchmarks.schedule import rotate
from benchmarks.stacks import BuiltStack
from benchmarks.workloads import tar_into
from layerfs.errors import LayerfsError

IMAGE_TAG = "bench"
TOOL_TIMEOUT = 3600.0  # seconds
LIBRARY_WORKLOADS = ("apply", "mklayer")
APPLY_NAMES = ("apply_layer", "ApplyOptions", "ApplyMode")
CREATE_NAMES = ("create_layer", "CreateOptions", "Compression")

Action = Callable[[Path], None]


class LibraryError(Exception):
    """A tool or the library failed, or produced the wrong tree."""


@dataclass(frozen=True, slots=True)
class Contender:
    """One way of doing the work: a name and an action writing to a fresh destination."""

    name: str
    action: Action


def layerfs_tar(names: tuple[str, ...]) -> tuple[ModuleType | None, str | None]:
    """``layerfs.tar`` when it exports every one of *names*, else None and the reason."""
    try:
        module = importlib.import_module("layerfs.tar")
    except ImportError as exc:
        return None, f"layerfs.tar is not importable yet ({exc})"
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        return None, f"layerfs.tar does not export {', '.join(missing)} yet"
    return module, None


def run_library(
    name: str, config: RunConfig, wide: BuiltStack, scratch: Path, recorder: Recorder
) -> None:
    """Benchmark library workload *name* (``apply`` or ``mklayer``) on the *wide* tree."""
    scratch.mkdir(parents=True, exist_ok=True)
    if name == "apply":
        contenders, check = _apply_contenders(config, wide, scratch, recorder)
    else:
        contenders, check = _mklayer_contenders(config, wide, recorder)
    failed: set[str] = set()
    for rep in range(config.reps):
        for contender in rotate(contenders, rep):
            if contender.name in failed:
                continue
            print(f"  {name} rep {rep + 1}: {contender.name}", file=sys.stderr, flush=True)
            dest = scratch / f"{name}-{contender.name}-{rep}"
            try:
                start = time.perf_counter_ns()
                contender.action(dest)
                seconds = (time.perf_counter_ns() - start) / 1e9
                check(dest)
            except (LibraryError, LayerfsError, OSError, ValueError) as exc:
                failed.add(contender.name)
                recorder.skip(f"{contender.name} failed {name}: {exc}")
                continue
            finally:
                _remove(dest)
            recorder.add(Sample(name, "", "warm", "time", contender.name, rep, seconds))


def _apply_contenders(
    config: RunConfig, wide: BuiltStack, scratch: Path, recorder: Recorder
) -> tuple[list[Contender], Action]:
    contenders: list[Contender] = []
    blob = None
    if shutil.which("umoci") is None:
        recorder.skip("umoci is not installed: no OCI image for apply")
    else:
        image = scratch / "image"
        blob = build_image(wide.flat, image)
        contenders.append(Contender("umoci", lambda d: _umoci_unpack(image, d)))
    if blob is not None:
        layer = blob
        contenders.append(
            Contender("tar", lambda d: _tool(["tar", "-xf", str(layer), "-C", str(d)], d))
        )
        if "layerfs" in config.systems:
            module, reason = layerfs_tar(APPLY_NAMES)
            if module is None:
                recorder.skip(f"layerfs apply: {reason}")
            else:
                contenders.append(Contender("layerfs", lambda d: _layerfs_apply(module, layer, d)))
    expected = len(wide.files) + len(wide.dirs)

    def check(dest: Path) -> None:
        count = sum(len(files) + len(dirs) for _, dirs, files in _walk(dest))
        if count != expected:
            raise LibraryError(f"unpacked {count} entries, expected {expected}")

    return contenders, check


def _mklayer_contenders(
    config: RunConfig, wide: BuiltStack, recorder: Recorder
) -> tuple[list[Contender], Action]:
    contenders = [Contender("tar+zstd", lambda d: _tar_zstd(wide.flat, d))]
    if shutil.which("zstd") is None:
        recorder.skip("zstd is not installed: no tar+zstd baseline for mklayer")
        contenders = []
    if "layerfs" in config.systems:
        module, reason = layerfs_tar(CREATE_NAMES)
        if module is None:
            recorder.skip(f"layerfs mklayer: {reason}")
        else:
            contenders.append(Contender("layerfs", lambda d: _layerfs_create(module, wide.flat, d)))

    def check(dest: Path) -> None:
        if dest.stat().st_size == 0:
            raise LibraryError(f"{dest.name} is empty")

    return contenders, check


def build_image(tree: Path, image: Path) -> Path:
    """Build an OCI image holding *tree* as one layer with umoci; return the layer blob."""
    shutil.rmtree(image, ignore_errors=True)
    ref = f"{image}:{IMAGE_TAG}"
    for argv in (
        ["umoci", "init", "--layout", str(image)],
        ["umoci", "new", "--image", ref],
        ["umoci", "insert", "--image", ref, str(tree), "/"],
    ):
        _check(argv)
    index = json.loads((image / "index.json").read_text())
    manifest = _blob(image, index["manifests"][0]["digest"])
    layers = json.loads(manifest.read_text())["layers"]
    return _blob(image, layers[-1]["digest"])


def _blob(image: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return image / "blobs" / algorithm / hexdigest


def _umoci_unpack(image: Path, dest: Path) -> None:
    _check(["umoci", "raw", "unpack", "--image", f"{image}:{IMAGE_TAG}", str(dest)])


def _tool(argv: list[str], dest: Path) -> None:
    dest.mkdir()
    _check(argv)


def _layerfs_apply(module: ModuleType, blob: Path, dest: Path) -> None:
    dest.mkdir()
    options = module.ApplyOptions(mode=module.ApplyMode.ROOTFS)
    module.apply_layer(blob, dest, options=options)


def _layerfs_create(module: ModuleType, tree: Path, dest: Path) -> None:
    options = module.CreateOptions(compression=module.Compression.ZSTD)
    with open(dest, "wb") as out:
        module.create_layer(tree, out, options=options)


def _tar_zstd(tree: Path, dest: Path) -> None:
    with open(dest, "wb") as out:
        status, zstd = tar_into(tree, ["zstd", "-T0", "-q", "-c"], out)
    if status != 0 or zstd != 0:
        raise LibraryError(f"tar exited with {status}, zstd with {zstd}")


def _check(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise LibraryError(f"{' '.join(argv[:3])}: {lines[-1] if lines else proc.returncode}")


def _walk(top: Path) -> list[tuple[str, list[str], list[str]]]:
    return list(os.walk(top))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
