"""``mount.fuse.layerfs``: the helper mount(8) runs for ``-t fuse.layerfs`` and fstab lines.

util-linux calls ``/sbin/mount.fuse.layerfs SOURCE MOUNTPOINT [-s] [-n] [-v] [-f] [-o OPTS]``
(options gathered from the command line or the fstab line, ``defaults`` and ``noauto``
already removed). SOURCE becomes the mount's ``fsname``; the mount is the one ``layerfs SOURCE
MOUNTPOINT -o OPTS`` makes (:mod:`layerfs.cli.dropin`, with its fuse-overlayfs defaults), so
both routes of mount(8), this helper and mount.fuse3, give the same result.
"""

from __future__ import annotations

import sys
from pathlib import Path

from layerfs.cli.dropin import DropinCall, UsageError, mount, option_items
from layerfs.cli.shutdown import exit_without_teardown
from layerfs.errors import LayerfsError, describe_error

PROG = "mount.fuse.layerfs"
USAGE = f"usage: {PROG} SOURCE MOUNTPOINT [-fnsv] [-o OPTIONS]"
# mount(8) may pass these; none changes what layerfs does.
IGNORED_FLAGS = frozenset("nsv")


def parse_args(argv: list[str]) -> tuple[str, Path, list[str], bool]:
    """``(source, mountpoint, option items, fake)`` from a mount(8) helper command line."""
    positional: list[str] = []
    items: list[str] = []
    fake = False
    args = iter(argv)
    for arg in args:
        if (given := option_items(arg, args)) is not None:
            items.extend(given)
        elif arg == "-t":
            next(args, None)  # the type is fuse.layerfs, by construction
        elif arg.startswith("-") and len(arg) > 1:
            for flag in arg[1:]:
                if flag == "f":
                    fake = True
                elif flag not in IGNORED_FLAGS:
                    raise UsageError(f"unknown option -{flag}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError(USAGE)
    return positional[0], Path(positional[1]), items, fake


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 once mounted, 1 with a one-line message otherwise."""
    try:
        source, mountpoint, items, fake = parse_args(sys.argv[1:] if argv is None else argv)
        if not fake:
            mount(DropinCall(source, mountpoint, items))
            exit_without_teardown(0)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(2)
    except (LayerfsError, OSError) as exc:
        print(f"{PROG}: {describe_error(exc)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
