"""``layerfs create|ps|rm|diff|commit``: containers of the image store.

A container is a writable upper and workdir over an image's layers; ``layerfs mount
CONTAINER MNT`` mounts it. These commands only manage the store side.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from layerfs.cli.common import (
    compression_option,
    echo_json,
    fetch_timeout_option,
    format_option,
    open_store,
    root_option,
    store_layers,
)
from layerfs.cli.progress import progress_bar
from layerfs.store.bundle import write_config
from layerfs.tar import Compression

_KIND_LETTER = {"ADDED": "A", "CHANGED": "C", "DELETED": "D"}


@click.command("create")
@root_option
@click.option("--name", default=None, help="Container name (default: c-<short id>).")
@click.option(
    "--volume",
    "-v",
    "volumes",
    multiple=True,
    metavar="SPEC",
    help="NAME:/path[:ro] a named volume (made on first use), /host/path:/path[:ro] a bind "
    "mount, /path a new anonymous volume. Repeatable.",
)
@click.argument("image")
def create_cmd(root: str | None, name: str | None, volumes: tuple[str, ...], image: str) -> None:
    """Create a container over IMAGE and print its id.

    The image config's Volumes become anonymous volumes. A new, empty volume starts as a copy
    of what the image holds at its path.
    """
    store = open_store(root)
    with progress_bar() as progress:
        container = store.create_container(image, name, progress, volumes=volumes)
    click.echo(container.id)


@click.command("ps")
@root_option
@format_option
def ps_cmd(root: str | None, output: str) -> None:
    """List containers."""
    containers = open_store(root).containers()
    if output == "json":
        echo_json([{**c.to_json(), "path": str(c.path)} for c in containers])
        return
    click.echo(f"{'CONTAINER ID':<12}  {'NAME':<24} {'IMAGE':<40} CREATED")
    for c in containers:
        image = c.image_ref or c.image.split(":", 1)[1][:12]
        created = c.created[:19].replace("T", " ")
        click.echo(f"{c.short_id:<12}  {c.name:<24} {image:<40} {created}")


@click.command("rm")
@root_option
@click.option("--volumes", "-v", is_flag=True, help="Remove the containers' anonymous volumes too.")
@click.argument("containers", nargs=-1, required=True, metavar="CONTAINER...")
def rm_cmd(root: str | None, volumes: bool, containers: tuple[str, ...]) -> None:
    """Remove containers (their upper and workdir are deleted; volumes are kept)."""
    store = open_store(root)
    for name in containers:
        click.echo(store.remove_container(name, volumes=volumes).name)


@click.command("diff")
@root_option
@click.argument("container")
def diff_cmd(root: str | None, container: str) -> None:
    """List what CONTAINER changed: 'A /path' added, 'C /path' changed, 'D /path' deleted."""
    for change in open_store(root).diff(container):
        click.echo(f"{_KIND_LETTER[change.kind.name]} {change.path}")


@click.command("commit")
@root_option
@compression_option
@click.option("--message", "-m", default=None, help="Comment recorded in the image history.")
@click.argument("container")
@click.argument("new_ref", metavar="NAME[:TAG]")
def commit_cmd(
    root: str | None, compression: str, message: str | None, container: str, new_ref: str
) -> None:
    """Make an image from CONTAINER: its image plus a layer holding its changes."""
    store = open_store(root)
    with progress_bar() as progress:
        image = store.commit(
            container,
            new_ref,
            compression=Compression(compression),
            message=message,
            progress=progress,
        )
    click.echo(image.digest)


@click.command("bundle", context_settings={"ignore_unknown_options": True})
@root_option
@fetch_timeout_option
@click.argument("container")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def bundle_cmd(
    root: str | None,
    fetch_timeout: float,
    container: str,
    directory: Path,
    command: tuple[str, ...],
) -> None:
    """Make DIRECTORY an OCI runtime bundle of CONTAINER (for runc run --bundle DIRECTORY).

    Writes DIRECTORY/config.json (the process is COMMAND, given after --, or the image's
    Entrypoint and Cmd; the container's volumes are bind mounts) and mounts the container
    read-write at DIRECTORY/rootfs through FUSE. Unmount with: layerfs umount DIRECTORY/rootfs
    """
    from fuse_mount import daemon
    from fuse_mount.options import parse_mount

    store = open_store(root)
    box = store.container(container)
    config = store.runtime_config(box, list(command) or None)
    (lowers, upper, work), services = store_layers(root, box.id, fetch_timeout)
    write_config(directory, config)
    # FUSE serves only the mounting user unless allow_other
    items = ["allow_other"] if config["process"]["user"]["uid"] != os.geteuid() else []
    spec, options = parse_mount(items, lowers=lowers, upper=upper, work=work)
    daemon.mount(daemon.MountRequest(spec, options, directory / "rootfs", services=services))
    click.echo(directory)


COMMANDS = [create_cmd, ps_cmd, rm_cmd, diff_cmd, commit_cmd, bundle_cmd]
