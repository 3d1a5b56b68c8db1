"""Entry point of the ``layerfs`` command: a subcommand, or a FUSE-program mount call.

A command line in the calling convention of FUSE filesystem programs (``layerfs -o OPTS MNT``,
``layerfs SOURCE MNT -o OPTS``, as containers-storage and mount.fuse3 call fuse-overlayfs) is
handed to :mod:`layerfs.cli.dropin`; a subcommand name always wins. Everything else goes to the
click group of :mod:`layerfs.cli.group`. click is imported only then: a drop-in call is how
podman and mount(8) start every mount, and click with what it imports is about a fifth of
that start (``benchmarks/mount_start.py``).
"""

from __future__ import annotations

import sys

from layerfs.cli import dropin

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


def main() -> None:
    """Console-script entry point: a subcommand, or a FUSE-convention mount call."""
    argv = sys.argv[1:]
    if dropin.is_dropin_call(argv, COMMAND_MODULES):
        sys.exit(dropin.run(argv))
    from layerfs.cli.group import cli

    cli(prog_name="layerfs")
