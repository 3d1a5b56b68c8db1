"""What the command modules share: the store options, opening the store, output helpers.

Command modules import this module and never each other. It imports nothing but click at
import time (the store, httpx and rich come with the first call that needs them), so a command
that does not use the store, such as ``layerfs mount DIRS``, does not load it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from layerfs.store.store import Store

F = TypeVar("F", bound=Callable[..., Any])

# The environment variable naming the store root; the store reads it (``default_root``).
ROOT_ENV = "LAYERFS_ROOT"
# Compressions a new image layer may have (``commit``, ``squash``).
IMAGE_COMPRESSIONS = ("gzip", "zstd")


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


def open_store(root: str | None) -> Store:
    """The store at *root* (``None``: the default root), able to complete lazily pulled layers
    from their registries."""
    from layerfs.lazy.remote import RegistryRemote
    from layerfs.store.store import Store

    store = Store.open(root)
    store.remote = RegistryRemote()
    return store


def echo_json(value: Any) -> None:
    """Print *value* as indented JSON, keys in their order."""
    click.echo(json.dumps(value, indent=2, sort_keys=False))
