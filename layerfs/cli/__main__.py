"""``python -m layerfs.cli`` runs the ``layerfs`` command line (the same as the console script)."""

from layerfs.cli.main import main

main()
