"""``layerfs images|tag|rmi|inspect|import|export|unpack|squash``: the image store commands.

Each command checks its arguments, opens the store (``--root``, ``$LAYERFS_ROOT`` or the
default root) and delegates to one :class:`~layerfs.store.store.Store` method. Long operations
draw a progress bar on stderr when it is a terminal, and nothing otherwise.
"""

from __future__ import annotations

from typing import Any

import click

from layerfs.cli.common import (
    compression_option,
    echo_json,
    format_option,
    open_store,
    root_option,
)
from layerfs.cli.progress import progress_bar
from layerfs.store.images import Image
from layerfs.store.sources import split_source
from layerfs.store.store import Store
from layerfs.tar import Compression


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{size}B"


def _rows(store: Store, images: list[Image]) -> list[dict[str, Any]]:
    rows = []
    for image in images:
        local = store.local_bytes(image)
        for name in image.names or ("<none>:<none>",):
            repo, _, tag = name.rpartition(":")
            rows.append(
                {
                    "repository": repo,
                    "tag": tag,
                    "id": image.digest,
                    "created": image.created,
                    "size": image.size,
                    "local": local,
                }
            )
    return rows


@click.command("images")
@root_option
@format_option
def images_cmd(root: str | None, output: str) -> None:
    """List images: one line per tag (untagged images show <none>).

    LOCAL is the share of the image's blobs in the store: below 100% for an image pulled
    with --lazy until its layers are complete.
    """
    store = open_store(root)
    rows = _rows(store, store.images())
    if output == "json":
        echo_json(rows)
        return
    click.echo(
        f"{'REPOSITORY':<40} {'TAG':<20} {'IMAGE ID':<12}  {'CREATED':<20} {'SIZE':<9} LOCAL"
    )
    for row in rows:
        created = (row["created"] or "")[:19].replace("T", " ")
        short = row["id"].split(":", 1)[1][:12]
        size = human_size(row["size"])
        local = f"{100 * row['local'] // max(1, row['size'])}%"
        click.echo(
            f"{row['repository']:<40} {row['tag']:<20} {short:<12}  {created:<20} {size:<9} {local}"
        )


@click.command("tag")
@root_option
@click.argument("src")
@click.argument("dst")
def tag_cmd(root: str | None, src: str, dst: str) -> None:
    """Name the image SRC also DST (NAME[:TAG])."""
    open_store(root).tag(src, dst)


@click.command("rmi")
@root_option
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
def rmi_cmd(root: str | None, refs: tuple[str, ...]) -> None:
    """Remove image tags (or, by id or digest, images); unused blobs and layers are deleted."""
    store = open_store(root)
    for ref in refs:
        result = store.remove_image(ref)
        for name in result.untagged:
            click.echo(f"Untagged: {name}")
        for digest in result.removed:
            click.echo(f"Deleted: {digest}")


@click.command("inspect")
@root_option
@click.argument("ref")
def inspect_cmd(root: str | None, ref: str) -> None:
    """Show an image's id, tags, manifest and config as JSON."""
    echo_json(open_store(root).inspect(ref))


@click.command("import")
@root_option
@click.argument("source", metavar="PATH[:REFNAME]")
@click.argument("ref", metavar="[NAME[:TAG]]", required=False)
def import_cmd(root: str | None, source: str, ref: str | None) -> None:
    """Import an OCI image layout (dir or tar) or a docker-archive (docker save) tarball.

    PATH:REFNAME imports only the image the source calls REFNAME (the layout's
    org.opencontainers.image.ref.name, e.g. `v1` from `skopeo copy ... oci:DIR:v1`, or a
    docker-archive RepoTag). NAME[:TAG] names the imported image (TAG defaults to latest).
    Without it an image keeps the name its source gives: a containerd name, a ref.name of
    the form NAME:TAG, or RepoTags. A bare tag such as `v1` is never taken for a name: such
    an image is imported untagged (shown as <none>).
    """
    path, ref_name = split_source(source)
    store = open_store(root)
    with progress_bar() as progress:
        imported = store.import_path(path, ref, progress, ref_name=ref_name)
    for image in imported:
        click.echo(f"{image.digest} {' '.join(image.names) or '<none>'}")
    if any(not image.names for image in imported):
        hint = f"{source}:REFNAME" if ref_name is None else source
        click.echo(
            f"layerfs: the source names no repository for <none> images; name one with"
            f" `layerfs import {hint} NAME[:TAG]` or `layerfs tag ID NAME[:TAG]`",
            err=True,
        )


@click.command("export")
@root_option
@click.argument("ref")
@click.argument("dest", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["oci", "docker-archive"]),
    default="oci",
    show_default=True,
    help="oci: an OCI image layout directory; docker-archive: a tarball for docker load.",
)
def export_cmd(root: str | None, ref: str, dest: str, fmt: str) -> None:
    """Export image REF to DEST."""
    store = open_store(root)
    with progress_bar() as progress:
        store.export(ref, dest, "oci" if fmt == "oci" else "docker-archive", progress)


@click.command("unpack")
@root_option
@click.argument("ref")
@click.argument("directory", type=click.Path(file_okay=False))
def unpack_cmd(root: str | None, ref: str, directory: str) -> None:
    """Write the flattened root filesystem of REF into DIRECTORY."""
    store = open_store(root)
    with progress_bar() as progress:
        store.unpack(ref, directory, progress)


@click.command("squash")
@root_option
@compression_option
@click.argument("ref")
@click.argument("new_ref", metavar="NEWREF")
def squash_cmd(root: str | None, compression: str, ref: str, new_ref: str) -> None:
    """Make NEWREF: a single-layer image with the flattened content of REF."""
    store = open_store(root)
    with progress_bar() as progress:
        image = store.squash(ref, new_ref, compression=Compression(compression), progress=progress)
    click.echo(image.digest)


COMMANDS = [
    images_cmd,
    tag_cmd,
    rmi_cmd,
    inspect_cmd,
    import_cmd,
    export_cmd,
    unpack_cmd,
    squash_cmd,
]
