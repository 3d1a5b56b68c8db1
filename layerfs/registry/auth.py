"""Registry authentication: anonymous, basic, and bearer tokens from a ``WWW-Authenticate`` realm.

A request is first sent with whatever ``Authorization`` header worked last (none at first).
On a 401 the challenge decides: ``Basic`` resends it with the stored credentials;
``Bearer realm=...,service=...,scope=...`` asks the realm for a token (``GET`` with ``service``
and every ``scope`` wanted, plus basic credentials when we have some) and resends with
``Authorization: Bearer <token>``. Each request is retried at most once, so wrong credentials
end in the registry's 401, which the transport reports.

The flow runs inside httpx (:class:`httpx.Auth`) and only works with the synchronous client,
because it reads the token response itself.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass

import httpx

from layerfs.errors import RegistryError
from layerfs.registry.config import Credentials

log = logging.getLogger(__name__)

MAX_TOKEN_RESPONSE = 1 << 20  # bytes
_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lower-cased scheme and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Scheme k="v",k2=v2``; ``None`` for an empty or unreadable header."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if match is None or match.end() == pos:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


class RegistryAuth(httpx.Auth):
    """The auth flow for one registry endpoint; remembers the header that last worked.

    :meth:`add_scope` names the token scopes an operation needs beyond what the registry's
    challenge asks for (``repository:NAME:pull,push`` for a push, ``pull`` on the repository
    a blob is mounted from), so one token covers the whole operation.
    """

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self._scopes: list[str] = []
        self._header: str | None = None
        self._lock = threading.Lock()

    def add_scope(self, scope: str) -> None:
        with self._lock:
            if scope not in self._scopes:
                self._scopes.append(scope)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self._header
        if sent is not None:
            request.headers["Authorization"] = sent
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return
        if challenge.scheme == "basic":
            if self.credentials is None or sent == basic_header(self.credentials):
                return
            header = basic_header(self.credentials)
        elif challenge.scheme == "bearer":
            token_response = yield self._token_request(challenge)
            header = "Bearer " + self._read_token(token_response, challenge)
        else:
            return
        self._header = header
        request.headers["Authorization"] = header
        yield request

    def _token_request(self, challenge: Challenge) -> httpx.Request:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError("registry sent a Bearer challenge without a realm")
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        with self._lock:
            scopes = list(self._scopes)
        asked = challenge.params.get("scope")
        for scope in ([asked] if asked else []) + scopes:
            if ("scope", scope) not in params:
                params.append(("scope", scope))
        headers = {}
        if self.credentials is not None:
            params.append(("account", self.credentials.username))
            headers["Authorization"] = basic_header(self.credentials)
        log.debug("token request to %s for %s", realm, [v for k, v in params if k == "scope"])
        return httpx.Request("GET", realm, params=params, headers=headers)

    def _read_token(self, response: httpx.Response, challenge: Challenge) -> str:
        response.read()
        realm = challenge.params.get("realm")
        if response.status_code in (401, 403):
            raise RegistryError(
                f"authentication failed: token server {realm} rejected the "
                + ("credentials" if self.credentials else "anonymous request")
                + f" ({response.status_code})"
            )
        if response.status_code != 200 or len(response.content) > MAX_TOKEN_RESPONSE:
            raise RegistryError(
                f"token server {realm} answered {response.status_code}",
                temporary=response.status_code >= 500,
            )
        try:
            doc = response.json()
        except ValueError as exc:
            raise RegistryError(f"token server {realm} sent invalid JSON") from exc
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {realm} sent no token")
        return token
