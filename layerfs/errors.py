"""Errors of layerfs: POSIX outcomes as ``OSError`` with an errno, the rest as ``LayerfsError``.

POSIX-like operations of the core raise :class:`OSError` built by :func:`oserror`, so that a
caller (the FUSE boundary, a runtime) can read ``exc.errno`` exactly as it would for a syscall.
Everything that is not a POSIX outcome (a malformed layer, a digest that does not match, a bad
reference) raises a :class:`LayerfsError` subclass; each carries the errno the FUSE boundary
reports for it.
"""

from __future__ import annotations

import errno as _errno
import os


def oserror(code: int, path: str | None = None, path2: str | None = None) -> OSError:
    """Build the ``OSError`` subclass Python uses for *code* (``FileNotFoundError`` for ENOENT)."""
    if path2 is not None:
        return OSError(code, os.strerror(code), path, None, path2)
    if path is not None:
        return OSError(code, os.strerror(code), path)
    return OSError(code, os.strerror(code))


class LayerfsError(Exception):
    """Base of every non-POSIX error of layerfs; ``errno`` is what FUSE reports for it."""

    errno: int = _errno.EIO


class ConfigError(LayerfsError):
    """A stack or mount was described wrongly (missing lower, bad option, ...)."""

    errno = _errno.EINVAL


class LayerFormatError(LayerfsError):
    """A layer (directory or tar) is not valid input."""


class UnsafeLayerError(LayerFormatError):
    """A layer entry would create, change or delete something outside its destination."""

    errno = _errno.EPERM


class DigestMismatchError(LayerfsError):
    """Content did not hash to the digest it was named by."""


class StoreError(LayerfsError):
    """The image store is inconsistent or an operation on it cannot be done."""


class NotFoundError(StoreError):
    """An image, container, layer or blob that was asked for does not exist."""

    errno = _errno.ENOENT


class BadReferenceError(LayerfsError):
    """A ``name[:tag]`` / ``name@digest`` reference could not be parsed."""

    errno = _errno.EINVAL


class RegistryError(LayerfsError):
    """A registry refused a request or could not be reached.

    ``temporary`` says whether retrying the same request may succeed.
    """

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


def describe_error(exc: BaseException) -> str:
    """One line for an expected failure, as the command line and the mount daemon print it.

    An ``OSError`` gives ``strerror: path`` (and ``-> path2``), which its ``repr`` hides; any
    other error its message, or its class name when it has none.
    """
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.filename2:
            where += f" -> {exc.filename2}"
        return f"{exc.strerror or exc}{where}"
    return str(exc) or type(exc).__name__
