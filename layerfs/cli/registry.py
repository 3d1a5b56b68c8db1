"""``layerfs pull|push|login|logout``: exchange images with OCI registries.

Arguments are checked here and the work is delegated to :mod:`layerfs.registry`. Transfers
draw one progress bar per blob on stderr when it is a terminal (never with ``--quiet``).
"""

from __future__ import annotations

import sys

import click

from layerfs.cli.common import open_store, root_option
from layerfs.cli.progress import progress_bar
from layerfs.errors import RegistryError
from layerfs.lazy.pull import pull_complete, pull_lazy
from layerfs.registry import Credentials, Options, login, push
from layerfs.registry.config import remove_credentials, save_credentials
from layerfs.registry.platforms import parse_platform
from layerfs.registry.reference import normalise_registry


def _insecure_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--insecure",
        is_flag=True,
        help="Use plain HTTP for this registry (meant for loopback or private registries).",
    )(func)


def _quiet_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(func)


@click.command("pull")
@click.argument("ref")
@click.option("--platform", "platform_text", default=None, help="os/arch[/variant] to pull.")
@click.option(
    "--lazy",
    is_flag=True,
    help="Store manifest, config and each layer's table of contents only; file content is "
    "fetched when read (see docs/lazy.md).",
)
@click.option(
    "--no-prefetch",
    is_flag=True,
    help="With --lazy: never fetch the rest of the layers in the background.",
)
@_insecure_option
@_quiet_option
@root_option
def pull_command(
    ref: str,
    platform_text: str | None,
    lazy: bool,
    no_prefetch: bool,
    insecure: bool,
    quiet: bool,
    root: str | None,
) -> None:
    """Pull REF ([registry/]name[:tag|@digest]) into the store, tagged registry/name:tag.

    A plain pull also completes an image pulled with --lazy before.
    """
    if no_prefetch and not lazy:
        raise click.UsageError("--no-prefetch only applies to --lazy")
    wanted = parse_platform(platform_text) if platform_text else None
    store = open_store(root)
    with progress_bar(quiet=quiet) as progress:
        options = Options(insecure=insecure, platform=wanted, progress=progress)
        if lazy:
            result = pull_lazy(store, ref, options, prefetch=not no_prefetch)
        else:
            result = pull_complete(store, ref, options)
    name = result.name or "<untagged>"
    if not quiet:
        later = f" ({len(result.deferred)} layers lazily)" if result.deferred else ""
        click.echo(f"pulled {name} {result.image.digest}{later}", err=True)
    click.echo(result.image.digest)


@click.command("push")
@click.argument("local")
@click.argument("ref")
@_insecure_option
@_quiet_option
@root_option
def push_command(local: str, ref: str, insecure: bool, quiet: bool, root: str | None) -> None:
    """Push the store image LOCAL to REF; prints the manifest digest."""
    store = open_store(root)
    with progress_bar(quiet=quiet) as progress:
        result = push(store, local, ref, Options(insecure=insecure, progress=progress))
    if not quiet:
        click.echo(
            f"pushed {result.reference}: {len(result.uploaded)} uploaded, "
            f"{len(result.mounted)} mounted, {len(result.present)} already present",
            err=True,
        )
    click.echo(result.digest)


@click.command("login")
@click.argument("registry")
@click.option("--username", "-u", default=None, help="User name (prompted for if missing).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_insecure_option
def login_command(
    registry: str, username: str | None, password_stdin: bool, insecure: bool
) -> None:
    """Check credentials against REGISTRY and store them (auth.json, mode 0600)."""
    host = normalise_registry(registry)
    user = username or click.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    if not user or not password:
        raise click.UsageError("user name and password must not be empty")
    creds = Credentials(user, password)
    login(host, creds, Options(insecure=insecure))
    path = save_credentials(host, creds)
    click.echo(f"login succeeded; credentials for {host} stored in {path}", err=True)


@click.command("logout")
@click.argument("registry")
def logout_command(registry: str) -> None:
    """Forget the stored credentials of REGISTRY."""
    host = normalise_registry(registry)
    if not remove_credentials(host):
        raise RegistryError(f"not logged in to {host}")
    click.echo(f"removed credentials for {host}", err=True)


COMMANDS = [pull_command, push_command, login_command, logout_command]
