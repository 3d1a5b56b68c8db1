"""The public API surface (the layering rules are in test_architecture.py)."""

from __future__ import annotations

import layerfs

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
