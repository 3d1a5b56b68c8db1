"""Benchmarks of layerfs against a plain directory, kernel overlayfs and fuse-overlayfs.

Run as ``python -m benchmarks.run``; ``benchmarks/README.md`` and ``docs/performance.md``
describe the method. The package is not installed with layerfs: it runs from the checkout.
"""
