"""Which on-disk forms a test run compares with kernel overlayfs: privileged, or rootless.

A run with real privilege (root of the host, see :mod:`layerfs.privilege`) uses the kernel's
default forms: ``trusted.overlay.*`` xattrs. A run without it (an unprivileged user inside
``unshare -r``, as ``tests/dropin/test_rootless_suites.py`` runs the differential and FUSE
suites) uses what such a process can write and what the kernel allows it there: kernel mounts
with ``userxattr`` and ``user.overlay.*`` xattrs, no ``metacopy`` (the kernel refuses it with
``userxattr``), and no index: the kernel cannot use file handles in a user namespace, so its
copy-up breaks lower hard links and a ``link()`` of a lower object leaves two inodes. Such a
run generates no lower hard links and no ``link()``; its one configuration is
``tests.differential.configs.ROOTLESS``. And uid 0 of a user namespace is not root to the
kernel (without ``CAP_FSETID`` on the host a write drops set-uid bits), so what compares
layerfs's core or the model *as root* with the kernel is left to privileged runs; the core is
compared as the non-root caller, and the FUSE comparison runs one caller on both mounts.
"""

from __future__ import annotations

from layerfs import whiteout
from layerfs.privilege import is_privileged

ROOTLESS = not is_privileged()
XATTR_PREFIX = whiteout.USER_PREFIX if ROOTLESS else whiteout.TRUSTED_PREFIX
OPAQUE_STYLE = "user" if ROOTLESS else "trusted"
