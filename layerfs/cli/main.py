"""Entry point of the ``layerfs`` command: a click group that gathers the subcommand modules.

Each module listed in :data:`COMMAND_MODULES` exposes ``COMMANDS``, a list of click commands.
Errors a user can cause (a missing lower, a bad reference) are printed as one line and exit 1;
a traceback is shown only with ``--debug``.

A command line in the calling convention of FUSE filesystem programs (``layerfs -o OPTS MNT``,
``layerfs SOURCE MNT -o OPTS``, as containers-storage and mount.fuse3 call fuse-overlayfs) is
handed to :mod:`layerfs.cli.dropin` instead; a subcommand name always wins.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from layerfs import __version__
from layerfs.cli import dropin
from layerfs.errors import LayerfsError, describe_error

COMMAND_MODULES: tuple[str, ...] = (
    "layerfs.cli.mount",
    "layerfs.cli.layer",
    "layerfs.cli.images",
    "layerfs.cli.containers",
    "layerfs.cli.volumes",
    "layerfs.cli.registry",
)


class _Group(click.Group):
    """Turns expected failures into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (LayerfsError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"layerfs: {describe_error(exc)}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="layerfs")
@click.option("--debug", is_flag=True, help="Log every operation and show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """layerfs: layered filesystems for container images."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


for _module_name in COMMAND_MODULES:
    for _command in importlib.import_module(_module_name).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Console-script entry point: a subcommand, or a FUSE-convention mount call."""
    argv = sys.argv[1:]
    if dropin.is_dropin_call(argv, cli.commands):
        sys.exit(dropin.run(argv))
    cli(prog_name="layerfs")
