"""``layerfs volume create|ls|inspect|rm|prune``: volumes of the image store.

A volume is a directory of container data outside the layered storage; ``layerfs create
IMAGE -v NAME:/path`` mounts one into a container and ``layerfs bundle`` hands it to the
runtime. Each command delegates to :class:`~layerfs.store.volumes.Volumes` (``Store.volumes``).
"""

from __future__ import annotations

import click

from layerfs.cli.common import echo_json, format_option, open_store, root_option
from layerfs.errors import ConfigError


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise ConfigError(f"invalid label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


@click.group("volume")
def volume_group() -> None:
    """Manage volumes: container data that outlives the container."""


@volume_group.command("create")
@root_option
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Add a label.")
@click.argument("name", required=False)
def create_cmd(root: str | None, labels: tuple[str, ...], name: str | None) -> None:
    """Create an empty volume NAME (a random name if none is given) and print its name."""
    volume = open_store(root).volumes.create(name, _labels(labels))
    click.echo(volume.name)


@volume_group.command("ls")
@root_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="Print volume names only.")
def ls_cmd(root: str | None, output: str, quiet: bool) -> None:
    """List volumes and how many containers use each."""
    rows = open_store(root).volumes.describe_all()
    if output == "json":
        echo_json(rows)
        return
    if quiet:
        for row in rows:
            click.echo(row["name"])
        return
    click.echo(f"{'VOLUME NAME':<64}  {'KIND':<9}  {'CONTAINERS':>10}  CREATED")
    for row in rows:
        kind = "anonymous" if row["anonymous"] else "named"
        created = row["created"][:19].replace("T", " ")
        click.echo(f"{row['name']:<64}  {kind:<9}  {len(row['containers']):>10}  {created}")


@volume_group.command("inspect")
@root_option
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def inspect_cmd(root: str | None, names: tuple[str, ...]) -> None:
    """Show volumes as JSON: name, labels, data path and the containers that use them."""
    volumes = open_store(root).volumes
    echo_json([volumes.describe(name) for name in names])


@volume_group.command("rm")
@root_option
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def rm_cmd(root: str | None, names: tuple[str, ...]) -> None:
    """Delete volumes and their data; a volume a container uses is refused."""
    volumes = open_store(root).volumes
    for name in names:
        click.echo(volumes.remove(name).name)


@volume_group.command("prune")
@root_option
@click.option("--all", "-a", "everything", is_flag=True, help="Named volumes too.")
def prune_cmd(root: str | None, everything: bool) -> None:
    """Delete the anonymous volumes no container uses (with --all, unused named ones too)."""
    for volume in open_store(root).volumes.prune(all=everything):
        click.echo(volume.name)


COMMANDS = [volume_group]
