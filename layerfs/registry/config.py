"""Registry settings: stored credentials, mirrors and insecure (plain HTTP) registries.

Everything lives in one directory, ``$LAYERFS_CONFIG`` if set, else
``$XDG_CONFIG_HOME/layerfs`` (``~/.config/layerfs``):

``auth.json``
    ``{"auths": {"REGISTRY": {"auth": base64("user:password")}}}``, the layout of Docker's
    ``config.json``; written by ``layerfs login`` with mode 0600.
``registries.json``
    ``{"mirrors": {"docker.io": ["https://mirror.example", "http://10.0.0.5:5000"]},
    "insecure": ["localhost:5000"]}``; edited by hand.

Credentials are also read from Docker's ``$DOCKER_CONFIG/config.json``
(``~/.docker/config.json``), ``auths.<registry>.auth``, when ``auth.json`` has none.
Credential helpers (``credsStore``) are not run.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from layerfs.errors import ConfigError
from layerfs.registry.reference import normalise_registry

CONFIG_ENV = "LAYERFS_CONFIG"
DOCKER_CONFIG_ENV = "DOCKER_CONFIG"
AUTH_FILE = "auth.json"
REGISTRIES_FILE = "registries.json"
DOCKER_CONFIG_FILE = "config.json"
AUTH_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password (or token) for basic auth and token requests."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"

    def encode(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    @classmethod
    def decode(cls, text: str, what: str) -> Credentials:
        try:
            user, sep, password = base64.b64decode(text, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what}: malformed auth entry") from exc
        if not sep:
            raise ConfigError(f"{what}: auth entry is not user:password")
        return cls(user, password)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """``registries.json``: mirrors per registry (tried in order) and insecure registries."""

    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()

    def mirrors_of(self, registry: str) -> tuple[str, ...]:
        return self.mirrors.get(normalise_registry(registry), ())

    def is_insecure(self, host: str) -> bool:
        return normalise_registry(host) in self.insecure


def config_dir() -> Path:
    """``$LAYERFS_CONFIG``, else ``$XDG_CONFIG_HOME/layerfs``, else ``~/.config/layerfs``."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "layerfs"


def docker_config_file() -> Path:
    base = os.environ.get(DOCKER_CONFIG_ENV) or str(Path.home() / ".docker")
    return Path(base) / DOCKER_CONFIG_FILE


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return value


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what}: expected a list of strings")
    return tuple(value)


def load_registry_config(directory: Path | None = None) -> RegistryConfig:
    """Read ``registries.json`` (missing file: no mirrors, nothing insecure)."""
    path = (directory or config_dir()) / REGISTRIES_FILE
    doc = _read_json(path)
    mirrors_doc = doc.get("mirrors", {})
    if not isinstance(mirrors_doc, dict):
        raise ConfigError(f"{path}: mirrors must map registries to lists of mirrors")
    mirrors = {
        normalise_registry(reg): _string_list(urls, f"{path}: mirrors of {reg}")
        for reg, urls in mirrors_doc.items()
    }
    insecure = _string_list(doc.get("insecure", []), f"{path}: insecure")
    return RegistryConfig(mirrors, frozenset(normalise_registry(h) for h in insecure))


def auth_key(server: str) -> str:
    """The registry an ``auths`` key names: ``https://index.docker.io/v1/`` -> ``docker.io``."""
    host = urlsplit(server).netloc if "://" in server else server.split("/", 1)[0]
    return normalise_registry(host)


def _auths(path: Path) -> dict[str, Credentials]:
    auths = _read_json(path).get("auths", {})
    if not isinstance(auths, dict):
        raise ConfigError(f"{path}: auths must be an object")
    out: dict[str, Credentials] = {}
    for server, entry in auths.items():
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
            out[auth_key(server)] = Credentials.decode(entry["auth"], f"{path}: {server}")
    return out


def find_credentials(registry: str, directory: Path | None = None) -> Credentials | None:
    """Credentials for *registry*: ``auth.json`` first, then Docker's ``config.json``."""
    key = normalise_registry(registry)
    for path in ((directory or config_dir()) / AUTH_FILE, docker_config_file()):
        found = _auths(path).get(key)
        if found is not None:
            return found
    return None


def save_credentials(registry: str, creds: Credentials, directory: Path | None = None) -> Path:
    """Store *creds* for *registry* in ``auth.json`` (mode 0600, replaced atomically)."""
    path = (directory or config_dir()) / AUTH_FILE
    doc = _read_json(path)
    auths = doc.setdefault("auths", {})
    auths[normalise_registry(registry)] = {"auth": creds.encode()}
    _write_private(path, doc)
    return path


def remove_credentials(registry: str, directory: Path | None = None) -> bool:
    """Forget *registry* in ``auth.json``; ``False`` if it had no entry there."""
    path = (directory or config_dir()) / AUTH_FILE
    doc = _read_json(path)
    auths = doc.get("auths", {})
    if not isinstance(auths, dict) or normalise_registry(registry) not in auths:
        return False
    del auths[normalise_registry(registry)]
    _write_private(path, doc)
    return True


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    """Write *doc* to *path* readable by the owner only; the file never exists with wider mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, AUTH_FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
