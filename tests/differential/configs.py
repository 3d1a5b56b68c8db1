"""The worlds the differential tests compare in: kernel option sets and callers.

A :class:`Config` pairs the kernel's mount options for the comparison mount with the layerfs
options that promise the same behaviour, and says what can be compared:

* ``defaults``: the kernel's defaults (``index=off``, ``redirect_dir=off``, ``metacopy=off``)
  against layerfs's defaults. Without ``index`` the kernel breaks lower hard links on
  copy-up where layerfs keeps them (as ``index=on`` does), so these lowers hold none.
* ``index``: ``index=on`` (hard links kept), still no redirects and no metacopy.
* ``features``: ``index=on,redirect_dir=on,metacopy=on`` against layerfs with metacopy on.
  The kernel renames merged directories through redirect xattrs where layerfs copies them,
  so the uppers differ in form and only the merged views and outcomes are compared.

After every run the kernel mounts **layerfs's upper** with the options it needs (its
defaults when layerfs wrote no metacopy files) and must show the merged view layerfs showed.

A run without real privilege (:mod:`tests.forms`) has one configuration instead,
``rootless``: the kernel with ``userxattr`` in a user namespace, where it has no index, against
layerfs writing ``user.overlay.*`` xattrs; its lowers hold no hard links.

A caller is root, or a user with a uid, a gid and supplementary groups (:data:`USER`): the
kernel side runs its calls in a forked worker with those credentials, the core through
``Stack.as_caller``, the FUSE mount through the same worker on an ``allow_other`` mount.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerfs import Credentials, StackOptions, UpperFormat, WhiteoutStyle, XattrNamespace
from tests import forms

USER = Credentials(1000, 1000, frozenset({1000, 1002}))


@dataclass(frozen=True)
class Config:
    name: str
    kernel: tuple[str, ...]
    options: StackOptions
    hard_links: bool
    compare_upper: bool

    @property
    def readback(self) -> tuple[str, ...]:
        """Kernel options that read layerfs's upper: its defaults unless metacopy files (and
        ``userxattr`` for an upper in the unprivileged form)."""
        user = self.options.upper_format.xattrs is XattrNamespace.USER
        return (
            *(("userxattr",) if user else ()),
            *(("metacopy=on",) if self.options.metacopy else ()),
        )


ROOTLESS = Config(
    "rootless",
    ("userxattr",),
    StackOptions(upper_format=UpperFormat(XattrNamespace.USER, WhiteoutStyle.CHARDEV)),
    hard_links=False,
    compare_upper=True,
)
PRIVILEGED = {
    config.name: config
    for config in (
        Config("defaults", (), StackOptions(), hard_links=False, compare_upper=True),
        Config(
            "index",
            ("index=on", "redirect_dir=off", "metacopy=off"),
            StackOptions(),
            hard_links=True,
            compare_upper=True,
        ),
        Config(
            "features",
            ("index=on", "redirect_dir=on", "metacopy=on"),
            StackOptions(metacopy=True),
            hard_links=True,
            compare_upper=False,
        ),
    )
}
CONFIGS = {ROOTLESS.name: ROOTLESS} if forms.ROOTLESS else PRIVILEGED
BASELINE = ROOTLESS if forms.ROOTLESS else PRIVILEGED["index"]
"""The comparison of the model test and the FUSE test: layerfs's defaults (what a ``layerfs
mount`` without format options writes in this run) against the kernel keeping hard links
where it can."""
CALLERS: dict[str, Credentials | None] = {"root": None, "user": USER}
