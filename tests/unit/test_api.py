"""The public API surface and the layering rule: the core never imports FUSE or trio."""

from __future__ import annotations

import ast
from pathlib import Path

import layerfs

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "RENAME_EXCHANGE", "RENAME_NOREPLACE", "BadReferenceError", "CallerView",
    "ConfigError", "Credentials",
    "DigestMismatchError", "DirEntry", "FileHandle", "FileKind", "LayerFormatError",
    "LayerfsError", "Node", "NotFoundError", "RegistryError", "Stack", "StackOptions",
    "StackSpec", "Stat", "StatFs", "StoreError", "UnsafeLayerError", "UpperFormat",
    "WhiteoutStyle", "XattrNamespace", "__version__", "parse_mount_options",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(layerfs.__all__) == EXPECTED
    for name in layerfs.__all__:
        assert hasattr(layerfs, name), name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_core_never_imports_fuse_or_trio() -> None:
    offenders = []
    for path in (ROOT / "layerfs").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "layerfs").parts:
            continue  # the outer ring may import fuse_mount lazily
        bad = _imports(path) & {"pyfuse3", "trio", "fuse_mount"}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_fuse_error_only_at_the_boundary() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "layerfs").rglob("*.py")
        if "FUSEError" in p.read_text()
    ]
    assert users == []
