"""Pull and push images between the store and OCI distribution registries.

A **pull** fetches the manifest by tag or digest (an index or manifest list is narrowed to
one platform), then the config and layer blobs the store lacks, several at once, each streamed
into the store's :class:`~layerfs.store.ingest.Ingest` so it is verified against its digest
and size and appears in the store only complete; then the manifest itself, unchanged (so the
image id is the registry's manifest digest); then the tag, all under the store's write lock.
Mirrors of the registry are tried first, in order.

A **push** sends each layer the registry lacks (``HEAD`` first; a cross-repository mount when
the same registry is known to hold the blob in another repository; else ``POST`` then one
``PUT``, or ``PATCH`` chunks for large blobs), then the config, then the manifest, and checks
the ``Docker-Content-Digest`` the registry answers with against the local manifest digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx

from layerfs.errors import DigestMismatchError, LayerfsError, RegistryError
from layerfs.progress import NoProgress, Progress, Task, task
from layerfs.registry.config import (
    Credentials,
    RegistryConfig,
    find_credentials,
    load_registry_config,
)
from layerfs.registry.platforms import host_platform, select_manifest
from layerfs.registry.reference import RemoteReference, parse_remote, registry_endpoint
from layerfs.registry.transfers import BodyReader, Cancelled, run_parallel
from layerfs.registry.transport import RetryPolicy, Transport
from layerfs.store.images import Image
from layerfs.store.ingest import Ingest
from layerfs.store.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
    load_json,
)
from layerfs.store.store import Store
from layerfs.types import Digest

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))
MAX_MANIFEST = 4 << 20  # bytes, as the distribution spec allows registries to limit
CHUNK_SIZE = 8 << 20  # bytes: larger blobs are uploaded in PATCH chunks of this size
PARALLEL = 3  # blobs transferred at once
DIGEST_HEADER = "Docker-Content-Digest"


@dataclass(frozen=True)
class Options:
    """Settings of a pull or push; the defaults suit the command line."""

    insecure: bool = False  # plain HTTP to the registry named in the reference
    platform: Platform | None = None  # None: this host's
    config_dir: Path | None = None  # None: $LAYERFS_CONFIG or ~/.config/layerfs
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    parallel: int = PARALLEL
    chunk_size: int = CHUNK_SIZE
    progress: Progress = field(default_factory=NoProgress)  # one task per blob, keyed by digest


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did: the image, the local tag (None when pulled by digest alone),
    the endpoint that served it and which blobs were fetched, already present, or left to
    be fetched later (a lazy pull)."""

    image: Image
    reference: RemoteReference
    name: str | None
    endpoint: str
    fetched: tuple[Digest, ...]
    present: tuple[Digest, ...]
    deferred: tuple[Digest, ...] = ()  # recorded as partial layers (lazy pull)


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did, blob by blob, and the manifest digest the registry reported."""

    digest: Digest
    reference: RemoteReference
    uploaded: tuple[Digest, ...]
    mounted: tuple[Digest, ...]
    present: tuple[Digest, ...]


# -- sessions --------------------------------------------------------------------------------


def _endpoints(remote: RemoteReference, config: RegistryConfig, insecure: bool) -> list[str]:
    """Mirror URLs in configured order, then the registry itself (``http://`` if insecure)."""
    own = registry_endpoint(remote.registry)
    plain = insecure or config.is_insecure(remote.registry)
    out = [_mirror_url(m, config) for m in config.mirrors_of(remote.registry)]
    return [*out, f"{'http' if plain else 'https'}://{own}"]


def pull_endpoints(remote: RemoteReference, options: Options) -> list[str]:
    """The endpoint URLs a pull of *remote* tries, in order: its mirrors, then the registry."""
    return _endpoints(remote, load_registry_config(options.config_dir), options.insecure)


def _mirror_url(mirror: str, config: RegistryConfig) -> str:
    if "://" in mirror:
        return mirror.rstrip("/")
    return f"{'http' if config.is_insecure(mirror) else 'https'}://{mirror}"


def _host_of(url: str) -> str:
    return httpx.URL(url).netloc.decode()


def open_transport(
    endpoint_url: str, options: Options, credentials: Credentials | None = None
) -> Transport:
    """A transport to *endpoint_url* with the credentials stored for its host."""
    creds = credentials or find_credentials(_host_of(endpoint_url), options.config_dir)
    return Transport(endpoint_url, credentials=creds, retry=options.retry)


# -- pull ------------------------------------------------------------------------------------


class PartialLayers(Protocol):
    """Records a layer the store lacks as a partial layer instead of fetching it (lazy pull)."""

    def __call__(self, store: Store, remote: RemoteReference, layer: Descriptor) -> None: ...


def pull(
    store: Store, ref: str, options: Options | None = None, partial: PartialLayers | None = None
) -> PullResult:
    """Pull *ref* into *store*; tag it ``registry/repository:tag`` (see the module docstring).

    With *partial*, layer blobs the store lacks are not fetched: *partial* records each one
    (:mod:`layerfs.lazy.pull` reads its TOC), and :class:`PullResult` lists them as
    ``deferred``. Raises :class:`RegistryError` (unreachable, refused, missing),
    :class:`DigestMismatchError` (content that does not match its digest; nothing of it is
    stored) or :class:`StoreError`.
    """
    opts = options or Options()
    remote = parse_remote(ref)
    config = load_registry_config(opts.config_dir)
    endpoints = _endpoints(remote, config, opts.insecure)
    with _context(f"pull {remote}"):
        for position, url in enumerate(endpoints):
            try:
                with open_transport(url, opts) as transport:
                    return _pull_from(store, transport, remote, opts, partial)
            except (RegistryError, DigestMismatchError) as exc:
                if position + 1 == len(endpoints):
                    raise
                log.warning("mirror %s failed for %s (%s); trying the next", url, remote, exc)
    raise AssertionError("unreachable: the registry itself is always the last endpoint")


@contextlib.contextmanager
def _context(action: str) -> Iterator[None]:
    """Prefix registry and digest errors with what was being done (``pull REF: ...``)."""
    try:
        yield
    except RegistryError as exc:
        raise RegistryError(f"{action}: {exc}", temporary=exc.temporary) from exc
    except DigestMismatchError as exc:
        raise DigestMismatchError(f"{action}: {exc}") from exc


def _pull_from(
    store: Store,
    transport: Transport,
    remote: RemoteReference,
    opts: Options,
    partial: PartialLayers | None,
) -> PullResult:
    transport.auth.add_scope(f"repository:{remote.repository}:pull")
    data, digest = fetch_manifest(transport, remote.repository, remote.manifest_ref)
    if remote.digest is not None and digest != remote.digest:
        raise DigestMismatchError(f"{remote}: registry sent manifest {digest}")
    if _media_type(data) in INDEX_TYPES:
        wanted = opts.platform or host_platform()
        chosen = select_manifest(Index.from_bytes(data, f"index {digest}"), wanted, str(remote))
        data, digest = fetch_manifest(transport, remote.repository, chosen.digest)
        if digest != chosen.digest:
            raise DigestMismatchError(f"{remote}: manifest {chosen.digest} hashes to {digest}")
    manifest = Manifest.from_bytes(data, f"manifest {digest} of {remote}")
    wanted_blobs = _unique([manifest.config, *manifest.layers])
    with store.ingest() as ingest:
        missing = ingest.missing(wanted_blobs)
        deferred = [d for d in missing if partial is not None and d != manifest.config]
        for layer in deferred:
            assert partial is not None
            partial(store, remote, layer)
        missing = [d for d in missing if d not in deferred]
        run_parallel(
            opts.parallel,
            [_blob_fetcher(transport, remote.repository, d, ingest, opts) for d in missing],
        )
        ingest.put_bytes(data, digest)
        name = remote.local_name if remote.tag is not None else None
        image = store.add_image(Descriptor(manifest.media_type, digest, len(data)), name)
    fetched = tuple(d.digest for d in missing)
    present = tuple(d.digest for d in wanted_blobs if d not in missing and d not in deferred)
    later = tuple(d.digest for d in deferred)
    return PullResult(image, remote, name, transport.base_url, fetched, present, later)


def _media_type(data: bytes) -> str:
    doc = load_json(data, "manifest")
    if doc.get("schemaVersion") == 1:
        raise RegistryError("Docker schema 1 manifests are not supported")
    media_type = doc.get("mediaType")
    if isinstance(media_type, str):
        return media_type
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def fetch_manifest(transport: Transport, repository: str, reference: str) -> tuple[bytes, Digest]:
    """The manifest bytes for a tag or digest, and their sha256 (checked against the
    registry's ``Docker-Content-Digest`` when it sends one)."""
    path = f"/v2/{repository}/manifests/{reference}"
    headers = {"Accept": MANIFEST_ACCEPT}
    response = transport.request("GET", path, headers=headers, expect=(200, 404))
    if response.status_code == 404:
        raise RegistryError(
            f"manifest unknown: no image {repository}:{reference} at {transport.base_url}"
        )
    data = response.content
    if len(data) > MAX_MANIFEST:
        raise RegistryError(f"{repository}:{reference}: manifest larger than {MAX_MANIFEST} bytes")
    digest = Digest("sha256:" + hashlib.sha256(data).hexdigest())
    claimed = response.headers.get(DIGEST_HEADER)
    if claimed and claimed.startswith("sha256:") and claimed != digest:
        raise DigestMismatchError(
            f"{repository}:{reference}: manifest hashes to {digest}, registry says {claimed}"
        )
    if _media_type(data) not in MANIFEST_TYPES | INDEX_TYPES:
        raise RegistryError(f"{repository}:{reference}: unsupported manifest type")
    return data, digest


def _unique(descs: Iterable[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for desc in descs:
        seen.setdefault(desc.digest, desc)
    return list(seen.values())


class _UploadInterrupted(Exception):
    """An upload step failed in a way that starting the upload over may fix."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


def _blob_fetcher(
    transport: Transport, repository: str, desc: Descriptor, ingest: Ingest, opts: Options
) -> Callable[[threading.Event], None]:
    def fetch(stop: threading.Event) -> None:
        fetch_blob(transport, repository, desc, ingest, opts.progress, stop)

    return fetch


def fetch_blob(
    transport: Transport,
    repository: str,
    desc: Descriptor,
    ingest: Ingest,
    progress: Progress,
    stop: threading.Event,
) -> None:
    """Stream one blob into the store through *ingest*, verified; a connection lost midway
    starts it over (and its progress task with it)."""
    what = f"blob {desc.digest}"
    attempts = transport.retry.attempts
    for attempt in range(attempts):
        try:
            with (
                _blob_task(progress, desc) as report,
                transport.stream("GET", f"/v2/{repository}/blobs/{desc.digest}") as response,
            ):
                body = BodyReader(response.iter_bytes(), desc.size, what, stop)
                stream = io.BufferedReader(body, 1 << 20)
                ingest.put(stream, desc, report)
                return
        except httpx.TransportError as exc:
            if attempt + 1 >= attempts:
                raise RegistryError(
                    f"{what}: connection lost after {attempts} attempts ({exc})",
                    temporary=True,
                ) from exc
            transport.wait_retry(attempt, f"{what}: {exc}")


def _blob_task(progress: Progress, desc: Descriptor) -> AbstractContextManager[Task]:
    """The progress task of moving blob *desc*: keyed by its digest, named by its short id."""
    return task(progress, desc.digest[7:19], desc.size, key=desc.digest)


# -- push ------------------------------------------------------------------------------------


def push(store: Store, local: str, ref: str, options: Options | None = None) -> PushResult:
    """Push the store image *local* to *ref*; return what was sent and the manifest digest.

    A digest in *ref* must be the image's own. Raises :class:`RegistryError`,
    :class:`DigestMismatchError` (the registry computed another manifest digest).
    """
    opts = options or Options()
    image = store.resolve(local)
    remote = parse_remote(ref)
    if remote.digest is not None and remote.digest != image.digest:
        raise RegistryError(f"push {ref}: the image {local} has digest {image.digest}")
    store.ensure_image(image)
    config = load_registry_config(opts.config_dir)
    url = _endpoints(remote, config, opts.insecure)[-1]
    sources = mount_sources(store, remote)
    with _context(f"push {remote}"), open_transport(url, opts) as transport:
        transport.auth.add_scope(f"repository:{remote.repository}:pull,push")
        for repo in sorted(set(sources.values())):
            transport.auth.add_scope(f"repository:{repo}:pull")
        pusher = _Pusher(transport, remote.repository, store, opts, sources)
        layers = _unique(image.layers)
        run_parallel(opts.parallel, [pusher.job(d) for d in layers])
        pusher.push_blob(image.manifest.config, threading.Event())
        digest = _put_manifest(transport, remote, store.read_blob(image.digest), image)
    return PushResult(
        digest, remote, tuple(pusher.uploaded), tuple(pusher.mounted), tuple(pusher.present)
    )


def mount_sources(store: Store, remote: RemoteReference) -> dict[Digest, str]:
    """Blob digest -> another repository of *remote*'s registry known to hold it.

    Known means: an image of the store is tagged ``REGISTRY/REPO:TAG`` (what a pull writes)
    and the blob is its config or one of its layers.
    """
    out: dict[Digest, str] = {}
    for image in store.images():
        for name in image.names:
            first = name.split("/", 1)[0]
            if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
                continue
            with contextlib.suppress(LayerfsError):
                source = parse_remote(name)
                if source.registry == remote.registry and source.repository != remote.repository:
                    for desc in (image.manifest.config, *image.layers):
                        out.setdefault(desc.digest, source.repository)
    return out


class _Pusher:
    """Pushes blobs of one image to one repository; records what each blob needed."""

    def __init__(
        self,
        transport: Transport,
        repository: str,
        store: Store,
        opts: Options,
        sources: dict[Digest, str],
    ) -> None:
        self.transport = transport
        self.repository = repository
        self.store = store
        self.opts = opts
        self.sources = sources
        self.uploaded: list[Digest] = []
        self.mounted: list[Digest] = []
        self.present: list[Digest] = []

    def job(self, desc: Descriptor) -> Callable[[threading.Event], None]:
        return lambda stop: self.push_blob(desc, stop)

    def push_blob(self, desc: Descriptor, stop: threading.Event) -> None:
        """Make sure the registry holds *desc* in the repository; retry whole uploads."""
        path = f"/v2/{self.repository}/blobs/{desc.digest}"
        if self.transport.request("HEAD", path, expect=(200, 404)).status_code == 200:
            self.present.append(desc.digest)
            return
        attempts = self.transport.retry.attempts
        for attempt in range(attempts):
            try:
                self._upload(desc, stop)
                return
            except _UploadInterrupted as exc:
                if attempt + 1 >= attempts:
                    raise RegistryError(
                        f"upload of {desc.digest} failed after {attempts} attempts: {exc}",
                        temporary=True,
                    ) from exc.error
                self.transport.wait_retry(attempt, f"upload of {desc.digest}: {exc}")

    def _upload(self, desc: Descriptor, stop: threading.Event) -> None:
        start = f"/v2/{self.repository}/blobs/uploads/"
        source = self.sources.get(desc.digest)
        params = {"mount": desc.digest, "from": source} if source else None
        response = self.transport.request("POST", start, expect=(201, 202), params=params)
        if response.status_code == 201:
            self.mounted.append(desc.digest)
            return
        location = _location(response, start)
        with (
            _blob_task(self.opts.progress, desc) as report,
            self.store.open_blob(desc.digest) as stream,
        ):
            if desc.size <= self.opts.chunk_size:
                self._finish(location, desc, stream.read(), report)
            else:
                self._chunks(location, desc, stream, stop, report)
        self.uploaded.append(desc.digest)

    def _chunks(
        self,
        location: str,
        desc: Descriptor,
        stream: BinaryIO,
        stop: threading.Event,
        report: Task,
    ) -> None:
        offset = 0
        while chunk := stream.read(self.opts.chunk_size):
            if stop.is_set():
                raise Cancelled()
            end = offset + len(chunk) - 1
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end}",
            }
            response = self._send("PATCH", location, 202, headers, chunk)
            location = _location(response, location)
            offset += len(chunk)
            report.advance(len(chunk))
        self._finish(location, desc, b"", report)

    def _finish(self, location: str, desc: Descriptor, data: bytes, report: Task) -> None:
        url = httpx.URL(self.transport.url(location)).copy_add_param("digest", desc.digest)
        headers = {"Content-Type": "application/octet-stream"}
        self._send("PUT", str(url), 201, headers, data)
        report.advance(len(data))

    def _send(
        self, method: str, url: str, status: int, headers: dict[str, str], data: bytes
    ) -> httpx.Response:
        try:
            return self.transport.request(
                method, url, expect=(status,), headers=headers, content=data, retry=False
            )
        except RegistryError as exc:
            if exc.temporary:
                raise _UploadInterrupted(exc) from exc
            raise


def _location(response: httpx.Response, base: str) -> str:
    """The upload URL the registry told us to use next (``Location``, maybe relative)."""
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"upload to {base}: registry sent no Location header")
    return str(httpx.URL(str(response.url)).join(location))


def _put_manifest(
    transport: Transport, remote: RemoteReference, data: bytes, image: Image
) -> Digest:
    path = f"/v2/{remote.repository}/manifests/{remote.manifest_ref}"
    headers = {"Content-Type": image.manifest.media_type}
    response = transport.request("PUT", path, expect=(201,), headers=headers, content=data)
    claimed = response.headers.get(DIGEST_HEADER)
    if claimed and claimed != image.digest:
        raise DigestMismatchError(f"registry stored manifest {claimed}, local is {image.digest}")
    return image.digest


def login(registry: str, credentials: Credentials, options: Options | None = None) -> None:
    """Check *credentials* against *registry* (``GET /v2/``); :class:`RegistryError` if refused."""
    opts = options or Options()
    remote = RemoteReference(registry, "login-check")
    config = load_registry_config(opts.config_dir)
    url = _endpoints(remote, config, opts.insecure)[-1]
    with open_transport(url, opts, credentials) as transport:
        try:
            transport.request("GET", "/v2/")
        except RegistryError as exc:
            raise RegistryError(
                f"login to {registry} failed: {exc}", temporary=exc.temporary
            ) from exc
