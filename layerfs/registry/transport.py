"""HTTP to one registry endpoint: base URL, auth, retries with backoff, structured errors.

Everything above this module speaks in API paths (``/v2/<name>/manifests/<tag>``) and gets
either a response with an expected status or a :class:`RegistryError` whose message names the
request and the registry's own error code (``MANIFEST_UNKNOWN``, ``UNAUTHORIZED``...), and
whose ``temporary`` flag says whether trying again later may help.

Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential
backoff, ``Retry-After`` honoured up to :attr:`RetryPolicy.max_delay`. Only requests that are
safe to repeat are retried here; upload steps are retried as a whole by the client.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType

import httpx

from layerfs.errors import RegistryError
from layerfs.registry.auth import RegistryAuth
from layerfs.registry.config import Credentials

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0  # seconds
READ_TIMEOUT = 60.0  # seconds between two reads of one response
MAX_ERROR_BODY = 64 << 10  # bytes of an error response that are parsed
TEMPORARY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a transient failure is retried, and how long to wait in between."""

    attempts: int = 4
    base_delay: float = 0.5  # seconds before the second attempt; doubled each time
    max_delay: float = 8.0  # seconds

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number *attempt* (0-based)."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_delay)
        return min(self.base_delay * float(2**attempt), self.max_delay)


def endpoint_url(endpoint: str, insecure: bool) -> str:
    """``https://host`` (``http://`` when *insecure*); a full URL is kept as given."""
    if "://" in endpoint:
        return endpoint.rstrip("/")
    return f"{'http' if insecure else 'https'}://{endpoint}"


def _registry_errors(response: httpx.Response) -> str:
    """``CODE: message`` of a registry's JSON error body, or the reason phrase."""
    with contextlib.suppress(Exception):
        doc = response.json() if len(response.content) <= MAX_ERROR_BODY else None
        items = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(items, list) and items:
            parts = [
                f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ")
                for e in items
                if isinstance(e, dict)
            ]
            return "; ".join(parts)
    return response.reason_phrase or "error"


def status_error(method: str, url: str, response: httpx.Response) -> RegistryError:
    """The :class:`RegistryError` for an unexpected status (body must have been read)."""
    code = response.status_code
    detail = _registry_errors(response)
    if code == 401:
        text = f"authentication required or credentials rejected ({detail})"
    elif code == 403:
        text = f"access denied ({detail})"
    elif code == 404:
        text = f"not found ({detail})"
    else:
        text = f"{code} {detail}"
    return RegistryError(f"{method} {url}: {text}", temporary=code in TEMPORARY_STATUS)


def connection_error(method: str, url: str, exc: Exception, attempts: int) -> RegistryError:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    reason = str(exc) or type(exc).__name__
    return RegistryError(f"{method} {url}: connection failed{tries}: {reason}", temporary=True)


class Transport:
    """A client for one registry endpoint (a registry or one of its mirrors)."""

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        retry: RetryPolicy | None = None,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self.base_url = endpoint_url(endpoint, insecure)
        self.retry = retry or RetryPolicy()
        self.auth = RegistryAuth(credentials)
        self._client = httpx.Client(
            auth=self.auth,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            follow_redirects=True,
            headers={"User-Agent": "layerfs"},
        )

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def url(self, path_or_url: str) -> str:
        """An absolute URL: API paths are joined to the endpoint, ``Location`` values resolved."""
        return str(httpx.URL(self.base_url + "/").join(path_or_url))

    def request(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """Send one request (retried if *retry* and transient); return it if its status is
        in *expect*, raise :class:`RegistryError` otherwise. The body is read."""
        url = self.url(path)
        attempts = self.retry.attempts if retry else 1
        for attempt in range(attempts):
            try:
                response = self._client.request(
                    method, url, headers=headers, content=content, params=params
                )
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise connection_error(method, url, exc, attempts) from exc
                self._wait(attempt, None, f"{method} {url}: {exc}")
                continue
            if response.status_code in expect:
                return response
            error = status_error(method, url, response)
            if not (error.temporary and attempt + 1 < attempts):
                raise error
            self._wait(attempt, response.headers.get("Retry-After"), str(error))
        raise AssertionError("unreachable: the loop returns or raises")

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
        timeout: float | None = None,
    ) -> Iterator[httpx.Response]:
        """An open streaming response with a status in *expect* (opening is retried like
        :meth:`request`); *timeout* replaces the transport's timeouts for this request.

        Failures while the body streams surface as :class:`httpx.TransportError`; the caller
        decides whether to start over.
        """
        url = self.url(path)
        attempts = self.retry.attempts
        limit = httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT
        for attempt in range(attempts):
            try:
                request = self._client.build_request(method, url, headers=headers, timeout=limit)
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise connection_error(method, url, exc, attempts) from exc
                self._wait(attempt, None, f"{method} {url}: {exc}")
                continue
            try:
                if response.status_code in expect:
                    yield response
                    return
                response.read()
                error = status_error(method, url, response)
            finally:
                response.close()
            if not (error.temporary and attempt + 1 < attempts):
                raise error
            self._wait(attempt, response.headers.get("Retry-After"), str(error))

    def wait_retry(self, attempt: int, reason: str) -> None:
        """Back off before repeating a failed multi-request step (used by the client)."""
        self._wait(attempt, None, reason)

    def _wait(self, attempt: int, retry_after: str | None, reason: str) -> None:
        delay = self.retry.delay(attempt, retry_after)
        log.info("retrying in %.1fs: %s", delay, reason)
        time.sleep(delay)
