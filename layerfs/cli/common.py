"""What the command modules share: the store options, opening the store, output helpers.

Command modules import this module and never each other. It imports nothing but click at
import time (the store, httpx and rich come with the first call that needs them), so a command
that does not use the store, such as ``layerfs mount DIRS``, does not load it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from fuse_mount.daemon import MountService
    from layerfs.options import Lower
    from layerfs.store.store import Store

F = TypeVar("F", bound=Callable[..., Any])

# The environment variable naming the store root; the store reads it (``default_root``).
ROOT_ENV = "LAYERFS_ROOT"
# Compressions a new image layer may have (``commit``, ``squash``).
IMAGE_COMPRESSIONS = ("gzip", "zstd")
FETCH_TIMEOUT = 30.0  # seconds a read of a lazily pulled layer may wait (RangeOptions' default)


def root_option(func: F) -> F:
    """``--root DIR``: which store to use; without it the store's default, which
    ``$LAYERFS_ROOT`` overrides (see :func:`layerfs.store.store.default_root`)."""
    return click.option(
        "--root",
        type=click.Path(file_okay=False),
        default=None,
        help=f"Store root (default: ${ROOT_ENV}, /var/lib/layerfs as root, "
        "~/.local/share/layerfs otherwise).",
    )(func)


def format_option(func: F) -> F:
    """``--format table|json`` for listing commands."""
    return click.option(
        "--format",
        "output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


def compression_option(func: F) -> F:
    """``--compression gzip|zstd`` of a new image layer: a :class:`~layerfs.tar.Compression`
    value."""
    return click.option(
        "--compression",
        type=click.Choice(IMAGE_COMPRESSIONS),
        default="zstd",
        show_default=True,
        help="Compression of the new layer.",
    )(func)


def fetch_timeout_option(func: F) -> F:
    """``--fetch-timeout SECONDS``: how long a read of a lazily pulled layer may wait."""
    return click.option(
        "--fetch-timeout",
        type=click.FloatRange(min=0.1),
        default=FETCH_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="For layers pulled with --lazy: how long a read may wait for content from the "
        "registry before it fails with EIO.",
    )(func)


def open_store(root: str | None, fetch_timeout: float = FETCH_TIMEOUT) -> Store:
    """The store at *root* (``None``: the default root), able to complete lazily pulled layers
    from their registries and to read them, one read waiting *fetch_timeout* seconds at most."""
    from layerfs.lazy.remote import RegistryRemote
    from layerfs.registry.ranges import RangeOptions
    from layerfs.store.store import Store

    store = Store.open(root)
    store.remote = RegistryRemote(ranges=RangeOptions(timeout=fetch_timeout))
    return store


def echo_json(value: Any) -> None:
    """Print *value* as indented JSON, keys in their order."""
    import json  # only for listings: `layerfs mount` does not need it

    click.echo(json.dumps(value, indent=2, sort_keys=False))


Layers = tuple[list["Lower"], Path | None, Path | None]  # lowers top-most first, upper, work


def store_layers(
    root: str | None, source: str, fetch_timeout: float = FETCH_TIMEOUT
) -> tuple[Layers, tuple[MountService, ...]]:
    """The layers of an image (read-only) or a container (with its upper) in the store, and
    what runs along with its mount. The partial layers of a lazily pulled image are read
    through their TOCs (content fetched as it is read) and completed in the background
    while the mount is served, unless pulled with ``--no-prefetch``; a partial layer
    without a TOC is fetched whole first. A read waits *fetch_timeout* seconds at most."""
    from layerfs.lazy.completion import MountCompletion
    from layerfs.lazy.remote import RegistryRemote

    store = open_store(root, fetch_timeout)
    lowers, upper, work = store.mount_spec(source)
    services: tuple[MountService, ...] = ()
    if not all(isinstance(lower, Path) for lower in lowers):
        assert isinstance(store.remote, RegistryRemote)
        services = (MountCompletion(store, store.mount_image(source), store.remote),)
    return (lowers, upper, work), services
