"""Distribution: pull images from and push them to OCI registries (``docs/registry.md``)."""

from __future__ import annotations

from layerfs.registry.client import Options, PullResult, PushResult, login, pull, push
from layerfs.registry.config import Credentials
from layerfs.registry.reference import RemoteReference, parse_remote
from layerfs.registry.transport import RetryPolicy

__all__ = [
    "Credentials",
    "Options",
    "PullResult",
    "PushResult",
    "RemoteReference",
    "RetryPolicy",
    "login",
    "parse_remote",
    "pull",
    "push",
]
