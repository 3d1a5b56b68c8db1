"""Byte ranges of registry blobs: HTTP ``Range`` requests with a bounded time per read.

A :class:`RangeClient` reads parts of the blobs of one repository, through the same endpoints
a pull uses (mirrors first, then the registry, each with its stored credentials; a bearer
token that expires is renewed by the auth flow on the 401 that follows). Every call is bounded
by :attr:`RangeOptions.timeout` *in total*: connecting, waiting, retrying and reading a body
that trickles in all count, so a registry that is down, slow or stalls mid-body gives a
:class:`RegistryError` (``temporary=True``) after at most that long, never a hang. A later
call tries again from scratch. :meth:`RangeClient.read_ranges` merges adjacent ranges into one
request. A server that ignores ``Range`` and answers ``200`` is read up to the range and cut.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx

from layerfs.errors import RegistryError
from layerfs.registry.client import Options, open_transport, pull_endpoints
from layerfs.registry.reference import RemoteReference
from layerfs.registry.transport import RetryPolicy, Transport

log = logging.getLogger(__name__)

READ_TIMEOUT = 30.0  # seconds one read may take in total, retries included
RETRY_DELAY = 0.25  # seconds before trying again after a failure; doubled, capped at 2 s
MERGE_GAP = 0  # bytes between two ranges that still join them into one request
MAX_REQUEST = 16 << 20  # bytes: merged requests are not made longer than this


@dataclass(frozen=True, slots=True)
class RangeOptions:
    """How range reads behave: the total time bound and how ranges are merged."""

    timeout: float = READ_TIMEOUT
    retry_delay: float = RETRY_DELAY
    merge_gap: int = MERGE_GAP
    max_request: int = MAX_REQUEST


@dataclass(frozen=True, slots=True)
class RangeStatistics:
    """What a client has fetched: requests answered and body bytes received."""

    requests: int
    bytes: int
    failures: int


def merge_ranges(
    ranges: Sequence[tuple[int, int]], gap: int = MERGE_GAP, limit: int = MAX_REQUEST
) -> list[tuple[int, int]]:
    """Sorted, joined ranges: ranges at most *gap* bytes apart become one, up to *limit* long.

    Overlapping ranges are joined whatever their length.
    """
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1] + gap:
            last_start, last_end = out[-1]
            if start < last_end or max(end, last_end) - last_start <= limit:
                out[-1] = (last_start, max(end, last_end))
                continue
        out.append((start, end))
    return out


class RangeClient:
    """Reads byte ranges of blobs in *remote*'s repository; thread-safe."""

    def __init__(
        self,
        remote: RemoteReference,
        options: Options | None = None,
        ranges: RangeOptions | None = None,
    ) -> None:
        self.remote = remote
        self.options = options or Options()
        self.settings = ranges or RangeOptions()
        self._urls = pull_endpoints(remote, self.options)
        self._transports: dict[str, Transport] = {}
        self._pid = os.getpid()
        self._preferred = 0  # index of the endpoint that answered last
        self._lock = threading.Lock()
        self._requests = self._bytes = self._failures = 0

    def __enter__(self) -> RangeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()

    def statistics(self) -> RangeStatistics:
        with self._lock:
            return RangeStatistics(self._requests, self._bytes, self._failures)

    def prepare(self) -> None:
        """Set up the HTTP client of every endpoint now, so the first read does not pay for
        it (tens of milliseconds: TLS settings are loaded even for plain HTTP)."""
        for url in self._urls:
            self._transport(url)

    def read(self, digest: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (end exclusive) of blob *digest*: exactly ``end - start``."""
        return self.read_ranges(digest, [(start, end)])[0]

    def read_ranges(
        self, digest: str, ranges: Sequence[tuple[int, int]], deadline: float | None = None
    ) -> list[bytes]:
        """The bytes of each of *ranges*, in the order given, fetched as merged requests.

        The time bound applies to each merged request; a *deadline* (``time.monotonic()``
        seconds) ends the whole call by then, whatever is left of each request's bound.
        """
        merged = merge_ranges(ranges, self.settings.merge_gap, self.settings.max_request)
        pieces = {span: self._fetch(digest, span[0], span[1], deadline) for span in merged}
        out = []
        for start, end in ranges:
            for (m_start, m_end), data in pieces.items():
                if m_start <= start and end <= m_end:
                    out.append(data[start - m_start : end - m_start])
                    break
            else:
                out.append(b"")  # an empty range
        return out

    def _fetch(self, digest: str, start: int, end: int, limit: float | None = None) -> bytes:
        began = time.monotonic()
        deadline = began + self.settings.timeout
        if limit is not None:
            deadline = min(deadline, limit)
        what = f"blob {digest} bytes {start}-{end - 1}"
        delay = self.settings.retry_delay
        last: Exception | None = None
        while True:
            permanent = 0
            for url in self._endpoint_order():
                if deadline <= time.monotonic():
                    break
                try:
                    data = self._attempt(url, digest, start, end, deadline)
                except (RegistryError, httpx.HTTPError) as exc:
                    last = exc
                    permanent += isinstance(exc, RegistryError) and not exc.temporary
                    with self._lock:
                        self._failures += 1
                    log.debug("%s from %s failed: %s", what, url, exc)
                    continue
                self._prefer(url)
                return data
            if permanent == len(self._urls):
                raise RegistryError(f"{what}: {last}")
            remaining = deadline - time.monotonic()
            if remaining <= delay:
                raise RegistryError(
                    f"{what}: no answer within {deadline - began:.3g}s ({last})", temporary=True
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _endpoint_order(self) -> list[str]:
        with self._lock:
            first = self._preferred
        return self._urls[first:] + self._urls[:first]

    def _prefer(self, url: str) -> None:
        with self._lock:
            self._preferred = self._urls.index(url)

    def _transport(self, url: str) -> Transport:
        with self._lock:
            if self._pid != os.getpid():
                # a forked child (a mount daemon): the connections stay the parent's
                self._transports, self._pid = {}, os.getpid()
            transport = self._transports.get(url)
            if transport is None:
                single = Options(
                    insecure=self.options.insecure,
                    config_dir=self.options.config_dir,
                    retry=RetryPolicy(attempts=1),
                )
                transport = open_transport(url, single)
                transport.auth.add_scope(f"repository:{self.remote.repository}:pull")
                self._transports[url] = transport
            return transport

    def _attempt(self, url: str, digest: str, start: int, end: int, deadline: float) -> bytes:
        transport = self._transport(url)
        path = f"/v2/{self.remote.repository}/blobs/{digest}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        timeout = max(0.001, deadline - time.monotonic())
        with transport.stream(
            "GET", path, headers=headers, expect=(200, 206), timeout=timeout
        ) as response:
            skip = 0 if response.status_code == 206 else start
            if response.status_code == 206:
                _check_content_range(response, start, end)
            data = _read_body(response.iter_bytes(), skip, end - start, deadline)
        with self._lock:
            self._requests += 1
            self._bytes += len(data)
        if len(data) != end - start:
            raise RegistryError(f"short answer: {len(data)} of {end - start} bytes", temporary=True)
        return data


def _check_content_range(response: httpx.Response, start: int, end: int) -> None:
    value = response.headers.get("Content-Range", "")
    unit, _, rest = value.partition(" ")
    span = rest.split("/", 1)[0]
    if unit != "bytes" or span != f"{start}-{end - 1}":
        raise RegistryError(f"registry answered Content-Range {value!r} for {start}-{end - 1}")


def _read_body(chunks: Iterator[bytes], skip: int, want: int, deadline: float) -> bytes:
    """*want* bytes after the first *skip* of a body; stops at *deadline* (never waits past it
    by more than one socket read, whose own timeout is the time left)."""
    out = bytearray()
    for piece in chunks:
        if skip:
            cut = min(skip, len(piece))
            piece, skip = piece[cut:], skip - cut
        out += piece
        if len(out) >= want and skip == 0:
            break
        if time.monotonic() > deadline:
            raise RegistryError("registry too slow: the read's time ran out", temporary=True)
    return bytes(out[:want]) if len(out) >= want else bytes(out)
