"""Authentication: htpasswd (basic) on docker-registry, and the bearer-token flow.

The packaged docker-registry's token auth needs JWTs signed by a certificate it trusts, so
the bearer flow is tested against :class:`BearerRegistry`, a small registry endpoint of our
own that sends the ``WWW-Authenticate: Bearer`` challenge and checks the token its own
``/token`` realm issued for the scope.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from layerfs.cli.group import cli
from layerfs.errors import RegistryError
from layerfs.registry import Credentials, login, pull, push
from layerfs.registry.config import find_credentials
from layerfs.store import Store

from ..store.builders import BASE, TOP, write_oci_layout
from ..store.builders import Image as LayoutImage
from .helpers import committed_image, options
from .servers import BearerRegistry, RegistryServer, htpasswd_file

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

USER, PASSWORD = "tester", "s3cret-pass"


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    work = tmp_path_factory.mktemp("basic-registry")
    htpasswd = htpasswd_file(work / "htpasswd", USER, PASSWORD)
    with RegistryServer(work, htpasswd=htpasswd) as server:
        yield server


def cli_login(host: str, user: str, password: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["login", "--insecure", "-u", user, "--password-stdin", host], input=password + "\n"
    )
    return result.exit_code, result.stderr


@pytest.mark.root
def test_basic_auth_rejects_then_accepts_login(
    basic_registry: RegistryServer, tmp_path: Path, isolated_config: Path
) -> None:
    committed_image(tmp_path / "store", tmp_path)
    store = Store.open(tmp_path / "store")
    ref = f"{basic_registry.host}/private/app:1"
    with pytest.raises(RegistryError, match="authentication required"):
        push(store, "app:1", ref, options())

    code, err = cli_login(basic_registry.host, USER, "wrong")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"layerfs: login to {basic_registry.host} failed")
    assert "credentials rejected" in line
    assert not (isolated_config / "auth.json").exists()

    code, err = cli_login(basic_registry.host, USER, PASSWORD)
    assert code == 0, err
    auth_file = isolated_config / "auth.json"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    assert find_credentials(basic_registry.host) == Credentials(USER, PASSWORD)

    digest = push(store, "app:1", ref, options()).digest
    assert pull(Store.open(tmp_path / "fresh"), ref, options()).image.digest == digest

    logout = CliRunner().invoke(cli, ["logout", basic_registry.host])
    assert logout.exit_code == 0
    assert find_credentials(basic_registry.host) is None
    with pytest.raises(RegistryError, match="authentication required"):
        pull(Store.open(tmp_path / "third"), ref, options())


def test_docker_config_credentials_are_used(
    basic_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = tmp_path / "docker-config"
    docker.mkdir(exist_ok=True)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(
        json.dumps({"auths": {basic_registry.host: {"auth": token}}})
    )
    login(basic_registry.host, Credentials(USER, PASSWORD), options())
    assert find_credentials(basic_registry.host) == Credentials(USER, PASSWORD)
    with pytest.raises(RegistryError, match="manifest unknown"):
        pull(Store.open(tmp_path / "store"), f"{basic_registry.host}/none/here:1", options())


@pytest.fixture
def bearer(tmp_path: Path) -> Iterator[BearerRegistry]:
    layout = tmp_path / "layout"
    digests = write_oci_layout(layout, [LayoutImage("demo", [BASE, TOP])])
    with BearerRegistry(layout, USER, PASSWORD) as server:
        manifest = (layout / "blobs" / "sha256" / digests["demo"][7:]).read_bytes()
        server.tags[("demo/app", "1")] = manifest
        yield server


def test_bearer_flow(bearer: BearerRegistry, tmp_path: Path) -> None:
    ref = f"{bearer.host}/demo/app:1"
    with pytest.raises(RegistryError, match="rejected the anonymous request"):
        pull(Store.open(tmp_path / "store"), ref, options())

    code, err = cli_login(bearer.host, USER, "wrong")
    assert code == 1 and "rejected the credentials" in err

    code, err = cli_login(bearer.host, USER, PASSWORD)
    assert code == 0, err
    bearer.token_requests.clear()
    result = pull(Store.open(tmp_path / "store"), ref, options())
    assert result.name == ref
    (first, *_) = bearer.token_requests
    assert first["service"] == ["fake-registry"]
    assert first["account"] == [USER]
    assert "repository:demo/app:pull" in first["scope"]
    # one token serves the manifest and every blob
    assert len(bearer.token_requests) == 1


def test_bearer_anonymous_token(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digests = write_oci_layout(layout, [LayoutImage("demo", [BASE])])
    with BearerRegistry(layout, USER, PASSWORD, anonymous=True) as server:
        manifest = (layout / "blobs" / "sha256" / digests["demo"][7:]).read_bytes()
        server.tags[("library/demo", "latest")] = manifest
        result = pull(Store.open(tmp_path / "store"), f"{server.host}/library/demo", options())
        assert result.image.digest == digests["demo"]
        assert "account" not in server.token_requests[0]
