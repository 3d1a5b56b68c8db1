"""The ``layerfs`` click group: subcommands by name, each module imported when it is needed.

Each module named in :data:`layerfs.cli.main.COMMAND_MODULES` exposes ``COMMANDS``, a list of
click commands; a module is imported only when one of its commands runs (or ``--help`` lists
them), so ``layerfs mount`` does not pay for the store, the registry client and rich.
Errors a user can cause (a missing lower, a bad reference) are printed as one line and exit 1;
a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from layerfs import __version__
from layerfs.cli.main import COMMAND_MODULES
from layerfs.errors import LayerfsError, describe_error


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
