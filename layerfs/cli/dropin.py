"""``layerfs [SOURCE] MOUNTPOINT -o OPTIONS``: the calling convention of a FUSE filesystem program.

Programs that start fuse-overlayfs call ``PROGRAM -o lowerdir=…,upperdir=…,workdir=… TARGET``
(containers-storage's ``mount_program``, behind podman and buildah) or ``PROGRAM SOURCE TARGET
-o OPTIONS`` (``mount.fuse3``, behind ``mount -t fuse.layerfs`` and fstab lines). ``layerfs``
takes both next to its subcommands. The rule: when the first argument (after ``--debug``) is an
option of this convention (``-o``, ``-f``, ``-d``, ``-s``) or a word that is not the name of a
subcommand, the whole command line is such a call. A subcommand name wins, so a SOURCE must
not be spelled like one (``layerfs``, the conventional source, is safe).

Flags as libfuse programs read them: ``-o OPTS`` (repeatable, also ``-oOPTS``), ``-f``
foreground, ``-d`` / ``--debug`` debug log in the foreground, ``-s`` (single-threaded, accepted
and ignored). SOURCE becomes the mount's ``fsname``. As fuse-overlayfs does, a mount started by
uid 0 (uid 0 of a user namespace too) lets other users in and honours setuid bits
(``allow_other,suid``), and every mount is ``noatime``; options given later win where they
conflict. Then everything goes the way of ``layerfs mount``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from layerfs.cli.shutdown import exit_without_teardown
from layerfs.errors import LayerfsError, describe_error

PROG = "layerfs"
USAGE = f"usage: {PROG} [SOURCE] MOUNTPOINT -o OPTIONS [-f] [-d]"
GLOBAL_FLAGS = frozenset({"--debug"})
CONVENTION_FLAGS = frozenset({"-f", "-d", "-s"})
ROOT_DEFAULTS = ("allow_other", "suid", "noatime")
USER_DEFAULTS = ("noatime",)


class UsageError(Exception):
    """A command line no caller of a FUSE program would write (the message says why)."""


@dataclass
class DropinCall:
    """One call in the FUSE program convention."""

    source: str | None
    mountpoint: Path
    items: list[str] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False


def is_dropin_call(argv: list[str], commands: Collection[str]) -> bool:
    """Whether *argv* (without the program name) is a FUSE-convention call, by the rule above."""
    for arg in argv:
        if arg in GLOBAL_FLAGS:
            continue
        if arg.startswith("-o") or arg in CONVENTION_FLAGS:
            return True
        return not arg.startswith("-") and arg not in commands
    return False


def default_items() -> list[str]:
    """fuse-overlayfs's implicit options: ``allow_other,suid,noatime`` for uid 0, else
    ``noatime``; they come first, so options given by the caller win."""
    return list(ROOT_DEFAULTS if os.geteuid() == 0 else USER_DEFAULTS)


def option_items(arg: str, rest: Iterator[str]) -> list[str] | None:
    """The option items of ``-o OPTS`` (OPTS taken from *rest*) or ``-oOPTS``, as libfuse
    programs and mount(8) helpers take them; ``None`` when *arg* is neither."""
    from layerfs.options import split_option_list

    if arg == "-o":
        return split_option_list(next(rest, ""))
    if arg.startswith("-o"):
        return split_option_list(arg[2:])
    return None


def parse_args(argv: list[str]) -> DropinCall:
    """Read a FUSE-convention command line; raises :class:`UsageError` for anything else."""
    positional: list[str] = []
    items: list[str] = []
    foreground = debug = False
    args = iter(argv)
    for arg in args:
        if (given := option_items(arg, args)) is not None:
            items.extend(given)
        elif arg == "-f":
            foreground = True
        elif arg in ("-d", "--debug"):
            foreground = debug = True
        elif arg == "-s":
            continue
        elif arg.startswith("-") and len(arg) > 1:
            raise UsageError(f"unknown option {arg}; {USAGE}")
        else:
            positional.append(arg)
    if not 1 <= len(positional) <= 2:
        raise UsageError(USAGE)
    source = positional[0] if len(positional) == 2 else None
    return DropinCall(source, Path(positional[-1]), items, foreground, debug)


def mount(call: DropinCall) -> None:
    """Mount as *call* asks, fuse-overlayfs's implicit options first (:func:`default_items`);
    returns once the mount is ready. Raises :class:`LayerfsError` or ``OSError``."""
    from fuse_mount import daemon
    from fuse_mount.options import parse_mount

    spec, options = parse_mount([*default_items(), *call.items], fsname=call.source)
    request = daemon.MountRequest(
        spec, options, call.mountpoint, foreground=call.foreground, debug=call.debug
    )
    daemon.mount(request)


def run(argv: list[str]) -> int:
    """Mount as *argv* asks; 0 once unmounted again with ``-f``, else 1 or 2 with one line on
    stderr (a traceback only with ``--debug``). Once a daemon serves the mount, the process
    ends with status 0 at once (:mod:`layerfs.cli.shutdown`)."""
    try:
        call = parse_args(argv)
        mount(call)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (LayerfsError, OSError) as exc:
        if "--debug" in argv or "-d" in argv:
            raise
        print(f"{PROG}: {describe_error(exc)}", file=sys.stderr)
        return 1
    if not call.foreground:
        exit_without_teardown(0)
    return 0
