"""``layerfs mount`` and ``layerfs umount``: serve a stack through FUSE, and take it down.

Arguments are checked here, before anything is forked, so a mistake (a missing lower, a work
dir without an upper, a mount point already in use) is reported as one line by the parent
process. The FUSE frontend is imported only when a command runs, so the rest of the CLI works
without pyfuse3.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from layerfs.cli.common import Layers, fetch_timeout_option, root_option, store_layers
from layerfs.cli.shutdown import exit_without_teardown
from layerfs.errors import ConfigError

if TYPE_CHECKING:
    from fuse_mount.daemon import MountService


@click.command("mount")
@click.option("--lower", metavar="A:B:C", help="Lower layer directories, top-most first.")
@click.option("--upper", metavar="DIR", help="Upper directory (omit for a read-only mount).")
@click.option("--work", metavar="DIR", help="Work directory on the upper's filesystem.")
@click.option(
    "-o",
    "options",
    metavar="OPTS",
    multiple=True,
    help="Mount options: lowerdir=,upperdir=,workdir=, FUSE and generic options.",
)
@click.option("-f", "--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--log", "log_file", metavar="FILE", help="Append the daemon's log to FILE.")
@click.option("--debug", is_flag=True, help="Log every FUSE request.")
@root_option
@fetch_timeout_option
@click.argument("targets", nargs=-1, required=True, metavar="[IMAGE|CONTAINER] MOUNTPOINT")
@click.pass_context
def mount(
    ctx: click.Context,
    lower: str | None,
    upper: str | None,
    work: str | None,
    options: tuple[str, ...],
    foreground: bool,
    log_file: str | None,
    debug: bool,
    root: str | None,
    fetch_timeout: float,
    targets: tuple[str, ...],
) -> None:
    """Mount lower layers (and an upper) at MOUNTPOINT; returns once the mount is ready.

    Without an upper directory the mount is read-only. Given IMAGE or CONTAINER from the
    store instead of --lower, an image mounts read-only and a container read-write.
    """
    from fuse_mount import daemon
    from fuse_mount.options import parse_mount
    from layerfs.options import split_option_list

    if len(targets) > 2:
        raise click.UsageError("expected [IMAGE|CONTAINER] MOUNTPOINT")
    source = targets[0] if len(targets) == 2 else None
    services: tuple[MountService, ...] = ()
    if source is not None:
        if lower is not None or upper is not None or work is not None:
            raise ConfigError("give either IMAGE|CONTAINER or --lower/--upper/--work")
        (lowers, upper_dir, work_dir), services = store_layers(root, source, fetch_timeout)
    else:
        lowers, upper_dir, work_dir = _given_layers(lower, upper, work)
    items = [item for text in options for item in split_option_list(text)]
    spec, mount_options = parse_mount(items, lowers=lowers, upper=upper_dir, work=work_dir)
    request = daemon.MountRequest(
        spec,
        mount_options,
        Path(targets[-1]),
        foreground=foreground,
        debug=debug or bool(ctx.obj and ctx.obj.get("debug")),
        log_file=Path(log_file) if log_file else None,
        services=services,
    )
    daemon.mount(request)
    if not foreground:
        exit_without_teardown()


@click.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount(mountpoint: Path) -> None:
    """Unmount MOUNTPOINT and wait until its daemon has exited."""
    from fuse_mount.umount import unmount

    unmount(mountpoint)


def _given_layers(lower: str | None, upper: str | None, work: str | None) -> Layers:
    """``--lower/--upper/--work``: ``--lower`` separates layers with ``:`` and takes ``\\:``
    for a colon inside a path, as ``lowerdir=`` does."""
    from layerfs.options import split_lowerdir

    if lower is None:
        if upper is not None or work is not None:
            raise ConfigError("--upper and --work need --lower")
        return [], None, None
    return (
        [Path(p) for p in split_lowerdir(lower)],
        Path(upper) if upper is not None else None,
        Path(work) if work is not None else None,
    )


COMMANDS = [mount, umount]
