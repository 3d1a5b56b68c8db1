"""OCI layer tars: apply a layer blob to a directory, create one from an upper, list changes.

See ``docs/layers.md`` for the formats, the whiteout conversions, the safety rules and the
determinism rules.
"""

from __future__ import annotations

from layerfs.tar._tarinfo import MAX_EXTENDED_HEADER, StrictTarInfo
from layerfs.tar.apply import ApplyMode, ApplyOptions, ApplyResult, apply_layer
from layerfs.tar.changes import Change, ChangeKind, diff_changes
from layerfs.tar.compression import (
    MEDIA_TYPES,
    Compression,
    detect_compression,
    open_decompressed,
)
from layerfs.tar.create import CreateOptions, LayerDescriptor, create_layer

__all__ = [
    "MAX_EXTENDED_HEADER",
    "MEDIA_TYPES",
    "ApplyMode",
    "ApplyOptions",
    "ApplyResult",
    "Change",
    "ChangeKind",
    "Compression",
    "CreateOptions",
    "LayerDescriptor",
    "StrictTarInfo",
    "apply_layer",
    "create_layer",
    "detect_compression",
    "diff_changes",
    "open_decompressed",
]
