"""Stack options and the overlay mount-option syntax (``lowerdir=A:B,upperdir=U,workdir=W``).

The one place that knows the syntax, both ways: splitting an option list and a ``lowerdir=``
value (with ``\\``-escapes), reading items into a :class:`StackSpec`, and formatting a spec or
a list of lowers back into options that read the same.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from layerfs.errors import ConfigError
from layerfs.layer import LayerSource
from layerfs.privilege import whiteout_style_for
from layerfs.whiteout import UpperFormat, WhiteoutStyle, XattrNamespace

Lower = Path | LayerSource  # a host directory, or a layer opened from elsewhere


@dataclass(frozen=True, slots=True)
class StackOptions:
    """How a stack behaves; the defaults are kernel overlayfs's defaults, as used by root.

    ``metacopy`` (off by default, as in the kernel): a change of metadata alone (chmod, chown,
    utimes, setxattr) of a lower regular file copies up only its metadata, in the kernel's
    ``metacopy=on`` format; the data is copied when the file is first opened for writing. An
    upper written with it is read only by kernels mounted with ``metacopy=on``; without it,
    every copy-up copies the data and the upper mounts with the kernel's defaults.
    ``volatile``: skip the fsync of copied-up data (the kernel's ``volatile`` option).
    """

    upper_format: UpperFormat = field(default_factory=UpperFormat)
    metacopy: bool = False
    volatile: bool = False


@dataclass(frozen=True, slots=True)
class StackSpec:
    """Where a stack's layers are: lowers top-most first, and an optional upper + work dir.

    A lower is a host directory (a :class:`~pathlib.Path`) or a
    :class:`~layerfs.layer.LayerSource` that opens a layer of another kind when the stack is
    assembled (see ``docs/api.md``, "Layers that are not host directories").
    """

    lowers: tuple[Lower, ...]
    upper: Path | None = None
    work: Path | None = None
    options: StackOptions = field(default_factory=StackOptions)

    def validate(self, *, check_lowers: bool = True) -> None:
        """Raise :class:`ConfigError` with a one-line message for a stack that cannot work.

        Without *check_lowers* the lowers are not host directories (the caller gives the
        layers themselves) and only the upper and work directories are checked.
        """
        if check_lowers and not self.lowers:
            raise ConfigError("at least one lower layer is needed")
        for lower in self.lowers if check_lowers else ():
            if isinstance(lower, Path) and not lower.is_dir():
                raise ConfigError(f"lower layer is not a directory: {lower}")
        if (self.upper is None) != (self.work is None):
            raise ConfigError("an upper layer needs a work directory, and a work dir an upper")
        if self.upper is None or self.work is None:
            return
        for what, path in (("upper", self.upper), ("work", self.work)):
            if not path.is_dir():
                raise ConfigError(f"{what} directory does not exist: {path}")
        if os.stat(self.upper).st_dev != os.stat(self.work).st_dev:
            raise ConfigError(
                f"upper {self.upper} and work {self.work} are on different filesystems"
            )
        upper, work = self.upper.resolve(), self.work.resolve()
        if upper == work or upper in work.parents or work in upper.parents:
            raise ConfigError("upper and work directories must not contain each other")


WHITEOUT_STYLES = {style.value: style for style in WhiteoutStyle}


def parse_mount_options(text: str, *, privileged: bool = True) -> tuple[StackSpec, list[str]]:
    """Split an overlay option string into a :class:`StackSpec` and the remaining options.

    *text* is split at unescaped commas (:func:`split_option_list`), then read as
    :func:`parse_option_items` reads a list.
    """
    return parse_option_items(split_option_list(text), privileged=privileged)


def parse_option_items(
    items: Iterable[str],
    *,
    privileged: bool = True,
    lowers: Sequence[Lower] = (),
    upper: Path | None = None,
    work: Path | None = None,
) -> tuple[StackSpec, list[str]]:
    """Read overlay options (already split) into a :class:`StackSpec`; return the rest too.

    Understands ``lowerdir`` (``:``-separated, top-most first, ``\\:`` escapes a colon),
    ``upperdir``, ``workdir``, ``userxattr``, ``whiteout=chardev|wh-file``,
    ``metacopy=on|off`` and ``volatile``; everything else is returned untouched, in order.
    *lowers*, *upper* and *work* are layers given apart from the options (``--lower``, a
    container of the store): ``lowerdir=`` adds lowers below them, ``upperdir=`` and
    ``workdir=`` replace them.

    The upper format is the kernel's privileged form (``trusted.overlay.*`` xattrs, 0/0
    character-device whiteouts) unless the options or *privileged* say otherwise.
    ``userxattr``, or ``privileged=False``, selects ``user.overlay.*`` xattrs (the kernel
    refuses ``metacopy=on`` with ``userxattr``: an upper meant for it is written without).
    With ``privileged=False`` whiteouts are character devices where a probe in the work
    directory can make them and ``.wh.`` files elsewhere; ``whiteout=`` overrides either
    choice. Raises :class:`ConfigError` for a bad ``whiteout=`` or ``metacopy=`` value.
    """
    found: list[Lower] = list(lowers)
    user_xattrs = not privileged
    metacopy = False
    whiteouts: WhiteoutStyle | None = None
    volatile = False
    rest: list[str] = []
    for item in items:
        key, _, value = item.partition("=")
        if key == "lowerdir":
            found.extend(Path(p) for p in split_lowerdir(value))
        elif key == "upperdir":
            upper = Path(_unescape(value))
        elif key == "workdir":
            work = Path(_unescape(value))
        elif key == "userxattr":
            user_xattrs = True
        elif key == "whiteout":
            whiteouts = _whiteout_style(value)
        elif key == "metacopy":
            metacopy = _on_off(key, value)
        elif key == "volatile":
            volatile = True
        elif item:
            rest.append(item)
    if whiteouts is None:
        whiteouts = WhiteoutStyle.CHARDEV
        if not privileged and work is not None:
            whiteouts = whiteout_style_for(work)
    upper_format = UpperFormat(
        XattrNamespace.USER if user_xattrs else XattrNamespace.TRUSTED, whiteouts
    )
    options = StackOptions(upper_format=upper_format, metacopy=metacopy, volatile=volatile)
    return StackSpec(tuple(found), upper, work, options), rest


def format_mount_options(spec: StackSpec) -> str:
    """*spec* in the overlay option syntax: what :func:`parse_mount_options` reads back as
    *spec* (with ``privileged=True``), whatever characters its paths hold. A lower that is a
    :class:`~layerfs.layer.LayerSource` is written as its description, which names it for a
    reader (a log line) and reads back as a path.

    ``lowerdir=``, ``upperdir=`` and ``workdir=`` name the layers (paths escaped); the
    options follow where they differ from the kernel's defaults: ``userxattr``,
    ``whiteout=wh-file``, ``metacopy=on``, ``volatile``.
    """
    items = ["lowerdir=" + format_lowerdir(spec.lowers)]
    if spec.upper is not None:
        items.append("upperdir=" + escape_option_value(str(spec.upper)))
    if spec.work is not None:
        items.append("workdir=" + escape_option_value(str(spec.work)))
    upper_format = spec.options.upper_format
    if upper_format.xattrs is XattrNamespace.USER:
        items.append("userxattr")
    if upper_format.whiteouts is not WhiteoutStyle.CHARDEV:
        items.append(f"whiteout={upper_format.whiteouts.value}")
    if spec.options.metacopy:
        items.append("metacopy=on")
    if spec.options.volatile:
        items.append("volatile")
    return ",".join(items)


def _on_off(key: str, value: str) -> bool:
    if value not in ("on", "off"):
        raise ConfigError(f"{key}= takes on or off, not {value!r}")
    return value == "on"


def _whiteout_style(value: str) -> WhiteoutStyle:
    try:
        return WHITEOUT_STYLES[value]
    except KeyError:
        choices = "|".join(WHITEOUT_STYLES)
        raise ConfigError(f"mount option whiteout= takes {choices}, not {value!r}") from None


def split_escaped(text: str, sep: str, *, keep_escapes: bool, quotes: bool = False) -> list[str]:
    """Split *text* at unescaped *sep*; empty items are dropped.

    A backslash escapes the next character (overlayfs accepts ``\\,`` and ``\\:`` in layer
    paths). ``keep_escapes`` leaves the backslashes in, for a consumer that splits again. With
    *quotes*, *sep* inside double quotes does not split either (the quotes are kept).
    """
    items: list[str] = []
    current: list[str] = []
    escaped = quoted = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            if keep_escapes:
                current.append(char)
            escaped = True
        elif char == sep and not quoted:
            items.append("".join(current))
            current = []
        else:
            quoted ^= quotes and char == '"'
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item]


def split_option_list(text: str) -> list[str]:
    """Split ``a,b=c\\,d`` at unescaped commas; escapes are kept for the consumer to read.

    Backslash-escaped commas belong to a value (overlayfs accepts ``\\,`` and ``\\:`` in
    layer paths), so they must survive until the stack parses its own options. A comma inside
    double quotes does not split either, as mount(8) reads options: containers-storage passes
    SELinux labels as ``context="system_u:object_r:container_file_t:s0:c1,c2"``.
    """
    return split_escaped(text, ",", keep_escapes=True, quotes=True)


def split_lowerdir(value: str) -> list[str]:
    """The layers of a ``lowerdir=`` value (or ``--lower``): ``:``-separated, ``\\:`` escaped."""
    return split_escaped(value, ":", keep_escapes=False)


def format_lowerdir(lowers: Iterable[Lower]) -> str:
    """A ``lowerdir=`` value (and ``--lower`` argument) naming exactly *lowers*, top-most first:
    :func:`split_lowerdir` reads it back whatever characters the paths hold (a layer source
    is written as its description)."""
    return ":".join(escape_option_value(_name(p)) for p in lowers)


def _name(lower: Lower) -> str:
    return str(lower) if isinstance(lower, Path) else lower.description


def escape_option_value(value: str) -> str:
    """Escape a host path for an overlay-style option value (``\\``, ``,`` and ``:``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)
