"""layerfs: a layered (union) filesystem for container images, with overlayfs semantics.

The public API is re-exported here by explicit name; ``tests/unit/test_api.py`` pins the list.
"""

from __future__ import annotations

from layerfs.access import Credentials
from layerfs.errors import (
    BadReferenceError,
    ConfigError,
    DigestMismatchError,
    LayerFormatError,
    LayerfsError,
    NotFoundError,
    RegistryError,
    StoreError,
    UnsafeLayerError,
)
from layerfs.file import FileHandle
from layerfs.node import Node
from layerfs.options import StackOptions, StackSpec, parse_mount_options
from layerfs.pathapi import CallerView
from layerfs.stack import RENAME_EXCHANGE, RENAME_NOREPLACE, Stack
from layerfs.types import DirEntry, FileKind, Stat, StatFs
from layerfs.whiteout import UpperFormat, WhiteoutStyle, XattrNamespace

__version__ = "0.1.0"

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "BadReferenceError",
    "CallerView",
    "ConfigError",
    "Credentials",
    "DigestMismatchError",
    "DirEntry",
    "FileHandle",
    "FileKind",
    "LayerFormatError",
    "LayerfsError",
    "Node",
    "NotFoundError",
    "RegistryError",
    "Stack",
    "StackOptions",
    "StackSpec",
    "Stat",
    "StatFs",
    "StoreError",
    "UnsafeLayerError",
    "UpperFormat",
    "WhiteoutStyle",
    "XattrNamespace",
    "__version__",
    "parse_mount_options",
]
