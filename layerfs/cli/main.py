"""Entry point of the ``layerfs`` command: a click group that gathers the subcommand modules.

Each module named in :data:`COMMAND_MODULES` exposes ``COMMANDS``, a list of click commands;
a module is imported only when one of its commands runs (or ``--help`` lists them), so
``layerfs mount`` does not pay for the store, the registry client and rich.
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

# command name -> the module whose COMMANDS holds it
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(("mount", "umount"), "layerfs.cli.mount"),
    "layer": "layerfs.cli.layer",
    **dict.fromkeys(
        ("images", "tag", "rmi", "inspect", "import", "export", "unpack", "squash"),
        "layerfs.cli.images",
    ),
    **dict.fromkeys(("create", "ps", "rm", "diff", "commit", "bundle"), "layerfs.cli.containers"),
    "volume": "layerfs.cli.volumes",
    **dict.fromkeys(("pull", "push", "login", "logout"), "layerfs.cli.registry"),
}


class _Group(click.Group):
    """Imports a command's module when the command is asked for, and turns expected failures
    into one-line messages instead of tracebacks."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            for command in importlib.import_module(module).COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

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


def main() -> None:
    """Console-script entry point: a subcommand, or a FUSE-convention mount call."""
    argv = sys.argv[1:]
    if dropin.is_dropin_call(argv, COMMAND_MODULES):
        sys.exit(dropin.run(argv))
    cli(prog_name="layerfs")
