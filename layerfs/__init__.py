"""layerfs: a layered (union) filesystem for container images, with overlayfs semantics."""

from __future__ import annotations

__version__ = "0.1.0"
