"""Remote references ``[registry/]name[:tag|@digest]`` with Docker Hub's conventions.

Local store names are taken as typed (see :mod:`layerfs.store.refs`); remote references are
normalised the way ``docker pull`` reads them, so that ``alpine``, ``library/alpine`` and
``docker.io/library/alpine:latest`` all name one image:

* the first ``/``-separated component is a registry host when it contains ``.`` or ``:`` or
  is ``localhost``; otherwise the registry is ``docker.io``;
* on ``docker.io`` a single-component name ``NAME`` means ``library/NAME``;
* without tag or digest the tag is ``latest``;
* ``index.docker.io`` and ``registry-1.docker.io`` are spellings of ``docker.io``, whose API
  endpoint is ``registry-1.docker.io``.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerfs.errors import BadReferenceError
from layerfs.store.refs import DEFAULT_TAG, DIGEST_RE, NAME_RE, TAG_RE, reference_text
from layerfs.types import Digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_ENDPOINT})
OFFICIAL_NAMESPACE = "library"


@dataclass(frozen=True, slots=True)
class RemoteReference:
    """A normalised remote reference; ``tag`` is ``None`` only when ``digest`` pins the image."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: Digest | None = None

    def __str__(self) -> str:
        return reference_text(f"{self.registry}/{self.repository}", self.tag, self.digest)

    @property
    def endpoint(self) -> str:
        """The ``host[:port]`` that serves the registry API."""
        return registry_endpoint(self.registry)

    @property
    def local_name(self) -> str:
        """``registry/repository:tag``: the tag a pull writes into the store."""
        if self.tag is None:
            raise BadReferenceError(f"{self} has no tag")
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def manifest_ref(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest if self.digest is not None else str(self.tag)


def normalise_registry(host: str) -> str:
    """``docker.io`` for any Docker Hub spelling; other hosts unchanged (lower-cased)."""
    host = host.lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def registry_endpoint(registry: str) -> str:
    """The API host of *registry* (``registry-1.docker.io`` for Docker Hub)."""
    registry = normalise_registry(registry)
    return DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry


def _is_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse_remote(text: str) -> RemoteReference:
    """Parse and normalise a remote reference (see the module docstring).

    Raises :class:`BadReferenceError` for anything the distribution grammar rejects
    (upper-case repositories, empty components, bad tags, non-sha256 digests).
    """
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise BadReferenceError(f"invalid digest in reference {text!r}")
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not TAG_RE.match(tag):
            raise BadReferenceError(f"invalid tag in reference {text!r}")
    first, sep, remainder = rest.partition("/")
    if sep and _is_registry(first):
        registry, repository = normalise_registry(first), remainder
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"{OFFICIAL_NAMESPACE}/{repository}"
    if not NAME_RE.match(f"{registry}/{repository}"):
        raise BadReferenceError(f"invalid image reference {text!r}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return RemoteReference(registry, repository, tag, Digest(digest) if digest else None)
