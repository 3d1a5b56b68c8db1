"""The layerfs image store: an OCI image layout with unpacked layers and containers beside it.

See ``docs/images.md``. The facade is :class:`Store`; everything else is reachable from it.
"""

from __future__ import annotations

from layerfs.store.containers import Container
from layerfs.store.gc import GcResult
from layerfs.store.images import Image
from layerfs.store.mounts import Mount, MountKind, MountRequest
from layerfs.store.refs import Reference, parse_reference
from layerfs.store.store import MountSpec, RemoveResult, Store, default_root
from layerfs.store.volumes import Volume, Volumes

__all__ = [
    "Container",
    "GcResult",
    "Image",
    "Mount",
    "MountKind",
    "MountRequest",
    "MountSpec",
    "Reference",
    "RemoveResult",
    "Store",
    "Volume",
    "Volumes",
    "default_root",
    "parse_reference",
]
