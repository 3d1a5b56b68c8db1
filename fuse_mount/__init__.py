"""The FUSE frontend of layerfs: serves a :class:`layerfs.Stack` to the kernel via pyfuse3.

A thin adapter: kernel inode numbers, handles, attribute conversion and errno translation
live here; every filesystem decision is the stack's.
"""
