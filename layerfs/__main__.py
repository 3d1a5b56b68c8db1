"""``python -m layerfs`` runs the command line."""

from layerfs.cli.main import main

main()
