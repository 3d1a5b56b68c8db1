"""Image references: ``name[:tag]``, ``name@sha256:<hex>`` and short image-id prefixes.

The grammar is the one of the distribution reference format (lower-case path components
separated by ``/``, an optional ``host[:port]/`` in front, tags of at most 128 word characters),
so a name layerfs accepts is also one ``skopeo`` and ``umoci`` accept. Names are local: layerfs
does not add ``docker.io/library/``; ``alpine`` and ``docker.io/library/alpine`` are different
names. A reference without tag or digest means tag ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerfs.errors import BadReferenceError
from layerfs.types import Digest

DEFAULT_TAG = "latest"
NAME_MAX = 255  # characters, as the distribution spec
SHORT_ID_MIN = 4  # hex digits needed before a bare prefix is tried as an image id

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*)"
_NAME = rf"(?:{_HOST}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_HEX64 = r"[0-9a-f]{64}"

NAME_RE = re.compile(rf"^{_NAME}$")
TAG_RE = re.compile(rf"^{_TAG}$")
DIGEST_RE = re.compile(rf"^sha256:{_HEX64}$")
_REF_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>sha256:{_HEX64}))?$")
_SHORT_ID_RE = re.compile(rf"^(?:sha256:)?(?P<hex>[0-9a-f]{{{SHORT_ID_MIN},64}})$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference; ``tag`` is ``None`` only when a ``digest`` pins the image."""

    name: str
    tag: str | None = DEFAULT_TAG
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name) or len(self.name) > NAME_MAX:
            raise BadReferenceError(f"invalid image name {self.name!r}")
        if self.tag is not None and not TAG_RE.match(self.tag):
            raise BadReferenceError(f"invalid tag {self.tag!r}")
        if self.digest is not None and not DIGEST_RE.match(self.digest):
            raise BadReferenceError(f"invalid digest {self.digest!r}")
        if self.tag is None and self.digest is None:
            raise BadReferenceError(f"reference {self.name!r} needs a tag or a digest")

    def __str__(self) -> str:
        return reference_text(self.name, self.tag, self.digest)

    @property
    def tagged(self) -> str:
        """``name:tag``: the form stored in the ``org.opencontainers.image.ref.name`` annotation."""
        if self.tag is None:
            raise BadReferenceError(f"reference {self} has no tag")
        return f"{self.name}:{self.tag}"


def reference_text(name: str, tag: str | None, digest: str | None) -> str:
    """``name[:tag][@digest]``: how local and remote references are written."""
    text = name
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text


def parse_reference(text: str) -> Reference:
    """Parse ``name[:tag][@sha256:hex]``; the tag defaults to ``latest`` unless a digest is given.

    Raises :class:`BadReferenceError` for anything else (upper-case names, empty components,
    over-long tags, unsupported digest algorithms).
    """
    match = _REF_RE.match(text)
    if match is None or len(match["name"]) > NAME_MAX:
        raise BadReferenceError(f"invalid image reference {text!r}")
    digest = match["digest"]
    tag = match["tag"]
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(match["name"], tag, Digest(digest) if digest else None)


def parse_tagged(text: str) -> Reference:
    """Parse a reference that names a tag to create (``commit``, ``tag``): no digest allowed."""
    ref = parse_reference(text)
    if ref.digest is not None:
        raise BadReferenceError(f"{text!r}: a new tag cannot carry a digest")
    return ref


def has_tag(text: str) -> bool:
    """Whether *text* spells a tag after its name (``app:1``, ``host:5000/app:1``), so that it
    names an image rather than being a bare tag such as ``v1``."""
    last = text.split("@", 1)[0].rsplit("/", 1)[-1]
    return ":" in last


def short_id_prefix(text: str) -> str | None:
    """The hex digits of *text* if it may be an image-id prefix (``3f2a``, ``sha256:3f2a...``)."""
    match = _SHORT_ID_RE.match(text)
    return match["hex"] if match else None
