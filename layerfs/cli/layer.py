"""``layerfs layer apply|create``: unpack a layer blob, or write an upper as a layer blob.

``apply`` defaults to rootfs semantics (whiteouts delete, as ``umoci raw unpack``);
``--as-layer`` builds a new overlayfs lower layer instead. ``create`` prints the blob digest and
the diff_id. Both draw a progress bar on stderr when it is a terminal, and nothing otherwise.
"""

from __future__ import annotations

import os

import click

from layerfs import privilege
from layerfs.cli.progress import progress_bar
from layerfs.progress import task
from layerfs.tar import (
    ApplyMode,
    ApplyOptions,
    Compression,
    CreateOptions,
    apply_layer,
    create_layer,
)

COMPRESSIONS = {c.value: c for c in Compression}


@click.group()
def layer() -> None:
    """Apply or create OCI layer blobs (tar, tar+gzip, tar+zstd)."""


@layer.command("apply")
@click.argument("blob", type=click.Path(exists=True, dir_okay=False))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--as-layer",
    is_flag=True,
    help="Create DIRECTORY as an overlayfs lower layer: whiteouts stay whiteouts "
    "(0/0 devices with real privilege, .wh. files otherwise, uid 0 of a user namespace "
    "included) and opaque dirs get the opaque xattr.",
)
def apply_command(blob: str, directory: str, as_layer: bool) -> None:
    """Unpack layer BLOB into DIRECTORY.

    Without --as-layer, DIRECTORY must exist and the layer is applied onto it like
    `umoci raw unpack`: whiteouts delete, opaque markers empty their directory. Compression
    is recognised by its magic bytes. Entries that would reach outside DIRECTORY abort the
    command.
    """
    if as_layer:
        options = ApplyOptions(mode=ApplyMode.LAYER, upper_format=privilege.layer_format())
    else:
        options = ApplyOptions(mode=ApplyMode.ROOTFS)
    with progress_bar() as bars, task(bars, "apply", os.path.getsize(blob)) as progress:
        result = apply_layer(blob, directory, options=options, progress=progress)
    click.echo(f"entries {result.entries}")
    click.echo(f"digest  {result.digest}")
    click.echo(f"diff_id {result.diff_id}")


@layer.command("create")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("blob", type=click.Path(dir_okay=False, writable=True))
@click.option(
    "--compression",
    type=click.Choice(sorted(COMPRESSIONS)),
    default="zstd",
    show_default=True,
    help="Blob compression.",
)
@click.option("--level", type=int, default=3, show_default=True, help="Compression level.")
@click.option(
    "--lower",
    "lowers",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A lower directory (repeat, top-most first); metacopy files read their data here.",
)
def create_command(
    directory: str, blob: str, compression: str, level: int, lowers: tuple[str, ...]
) -> None:
    """Write upper DIRECTORY as a layer BLOB and print its digest and diff_id.

    Whiteouts (0/0 devices or .wh. files) become .wh. entries and opaque directories get a
    .wh..wh..opq marker. The same tree always gives the same bytes.
    """
    options = CreateOptions(compression=COMPRESSIONS[compression], level=level)
    tmp = f"{blob}.partial"
    try:
        with open(tmp, "wb") as out, progress_bar() as bars, task(bars, "create", None) as progress:
            desc = create_layer(directory, out, lowers=lowers, options=options, progress=progress)
        os.replace(tmp, blob)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    click.echo(f"digest     {desc.digest}")
    click.echo(f"diff_id    {desc.diff_id}")
    click.echo(f"size       {desc.size}")
    click.echo(f"media_type {desc.media_type}")


COMMANDS = [layer]
