"""The FUSE frontend of layerfs: serves a :class:`layerfs.Stack` to the kernel.

A backend-neutral request layer (:mod:`fuse_mount.requests`) owns kernel inode numbers,
handles, timeouts, credentials and errno translation; two session backends put it on the
wire: the native protocol (:mod:`fuse_mount.session`) and pyfuse3 (:mod:`fuse_mount.operations`).
Every filesystem decision is the stack's.
"""
