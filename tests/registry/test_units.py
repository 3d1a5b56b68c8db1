"""References, config files, challenges, platforms and the retry loop, without a registry."""

from __future__ import annotations

import base64
import io
import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from layerfs.cli.progress import BarProgress
from layerfs.errors import BadReferenceError, ConfigError, NotFoundError, RegistryError
from layerfs.registry import RetryPolicy
from layerfs.registry.auth import parse_challenge
from layerfs.registry.config import (
    Credentials,
    find_credentials,
    load_registry_config,
    remove_credentials,
    save_credentials,
)
from layerfs.registry.platforms import matches, parse_platform, select_manifest
from layerfs.registry.reference import parse_remote
from layerfs.registry.transport import Transport
from layerfs.store import Store
from layerfs.store.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
)
from layerfs.types import Digest

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.19", "docker.io/library/alpine:3.19"),
        ("library/alpine", "docker.io/library/alpine:latest"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/library/alpine:1", "docker.io/library/alpine:1"),
        ("registry-1.docker.io/user/app", "docker.io/user/app:latest"),
        ("user/app:v2", "docker.io/user/app:v2"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:x", "localhost:5000/a/b/c:x"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("ghcr.io/org/app.name/x:1.0", "ghcr.io/org/app.name/x:1.0"),
        (f"quay.io/app@{DIGEST}", f"quay.io/app@{DIGEST}"),
        (f"quay.io/app:1@{DIGEST}", f"quay.io/app:1@{DIGEST}"),
    ],
)
def test_references_are_normalised(text: str, expected: str) -> None:
    assert str(parse_remote(text)) == expected


def test_reference_parts() -> None:
    ref = parse_remote("alpine")
    assert (ref.registry, ref.repository, ref.tag, ref.endpoint) == (
        "docker.io",
        "library/alpine",
        "latest",
        "registry-1.docker.io",
    )
    assert ref.local_name == "docker.io/library/alpine:latest"
    pinned = parse_remote(f"localhost:5000/app@{DIGEST}")
    assert (
        pinned.tag is None and pinned.manifest_ref == DIGEST and pinned.endpoint == "localhost:5000"
    )
    with pytest.raises(BadReferenceError):
        _ = pinned.local_name


@pytest.mark.parametrize(
    "text", ["", "Alpine", "alpine:", "a//b", "localhost:5000/", "app@sha256:12", "app:bad tag"]
)
def test_bad_references(text: str) -> None:
    with pytest.raises(BadReferenceError):
        parse_remote(text)


def test_credentials_file_is_private_and_round_trips(tmp_path: Path) -> None:
    creds = Credentials("me", "pa:ss")
    path = save_credentials("index.docker.io", creds, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert find_credentials("docker.io", tmp_path) == creds
    assert "pa:ss" not in repr(creds)
    assert remove_credentials("docker.io", tmp_path)
    assert not remove_credentials("docker.io", tmp_path)
    assert find_credentials("docker.io", tmp_path) is None


def test_docker_config_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = base64.b64encode(b"hub:secret").decode()
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    assert find_credentials("docker.io", tmp_path / "none") == Credentials("hub", "secret")
    (docker / "config.json").write_text(json.dumps({"auths": {"x.io": {"auth": "!!"}}}))
    with pytest.raises(ConfigError, match="malformed"):
        find_credentials("x.io", tmp_path / "none")


def test_registries_file(tmp_path: Path) -> None:
    (tmp_path / "registries.json").write_text(
        json.dumps(
            {"mirrors": {"index.docker.io": ["https://m1", "m2:5000"]}, "insecure": ["m2:5000"]}
        )
    )
    config = load_registry_config(tmp_path)
    assert config.mirrors_of("docker.io") == ("https://m1", "m2:5000")
    assert config.is_insecure("m2:5000") and not config.is_insecure("m1")
    assert load_registry_config(tmp_path / "missing").mirrors == {}
    (tmp_path / "registries.json").write_text(json.dumps({"mirrors": {"a": "b"}}))
    with pytest.raises(ConfigError, match="list of strings"):
        load_registry_config(tmp_path)


def test_challenges() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert bearer is not None and bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull",
    }
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert (
        basic is not None and basic.scheme == "basic" and basic.params["realm"] == "Registry Realm"
    )
    assert parse_challenge("") is None


def _entry(arch: str, variant: str | None = None) -> Descriptor:
    return Descriptor(
        OCI_MANIFEST, Digest("sha256:" + arch[:1] * 64), 1, {}, Platform("linux", arch, variant)
    )


def test_platform_selection() -> None:
    index = Index(
        (_entry("amd64"), _entry("arm", "v6"), _entry("arm", "v7"), _entry("arm64", "v8"))
    )
    assert select_manifest(index, parse_platform("linux/arm/v7"), "x").platform == Platform(
        "linux", "arm", "v7"
    )
    assert select_manifest(index, parse_platform("linux/arm64"), "x").platform == Platform(
        "linux", "arm64", "v8"
    )
    assert matches(Platform("linux", "arm64"), parse_platform("linux/arm64/v8"))
    with pytest.raises(RegistryError, match="offered: linux/amd64, linux/arm/v6"):
        select_manifest(index, parse_platform("windows/amd64"), "x")
    with pytest.raises(BadReferenceError):
        parse_platform("linux")


class _Scripted(BaseHTTPRequestHandler):
    """Answers GETs with the next status of the server's script."""

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _ScriptServer)
        code, headers = server.script.pop(0) if server.script else (200, {})
        server.seen += 1
        body = b"{}"
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ScriptServer(ThreadingHTTPServer):
    script: list[tuple[int, dict[str, str]]]
    seen: int


@pytest.fixture
def scripted() -> Iterator[_ScriptServer]:
    server = _ScriptServer(("127.0.0.1", 0), _Scripted)
    server.script, server.seen = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.network
@pytest.mark.timeout(30)
def test_transient_statuses_are_retried(scripted: _ScriptServer) -> None:
    scripted.script = [(503, {}), (429, {"Retry-After": "0"}), (200, {})]
    policy = RetryPolicy(attempts=3, base_delay=0.01)
    with Transport(f"127.0.0.1:{scripted.server_address[1]}", insecure=True, retry=policy) as t:
        assert t.request("GET", "/v2/").status_code == 200
    assert scripted.seen == 3


@pytest.mark.network
@pytest.mark.timeout(30)
def test_retries_run_out_and_permanent_errors_are_not_retried(scripted: _ScriptServer) -> None:
    policy = RetryPolicy(attempts=2, base_delay=0.01)
    with Transport(f"127.0.0.1:{scripted.server_address[1]}", insecure=True, retry=policy) as t:
        scripted.script = [(502, {}), (502, {})]
        with pytest.raises(RegistryError, match="502") as info:
            t.request("GET", "/v2/")
        assert info.value.temporary
        scripted.script = [(403, {})]
        with pytest.raises(RegistryError, match="access denied") as denied:
            t.request("GET", "/v2/")
        assert not denied.value.temporary
    assert scripted.seen == 3


def test_retry_delays() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=3)
    assert [policy.delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 3]
    assert policy.delay(0, "2") == 2.0
    assert policy.delay(0, "600") == 3


def test_add_image_needs_every_blob(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    config = canonical_json({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [DIGEST]}})
    config_info = store.blobs.put_bytes(config)
    layer = Descriptor(OCI_LAYER_GZIP, Digest("sha256:" + "cd" * 32), 10)
    manifest = Manifest(Descriptor(OCI_CONFIG, config_info.digest, config_info.size), (layer,))
    info = store.blobs.put_bytes(manifest.to_bytes())
    desc = Descriptor(OCI_MANIFEST, info.digest, info.size)
    with pytest.raises(NotFoundError, match="missing"):
        store.add_image(desc, "host:5000/app:1")
    assert store.images() == []
    layer_data = b"layer-data"
    real = store.blobs.put_bytes(layer_data)
    manifest = Manifest(manifest.config, (Descriptor(OCI_LAYER_GZIP, real.digest, real.size),))
    info = store.blobs.put_bytes(manifest.to_bytes())
    image = store.add_image(Descriptor(OCI_MANIFEST, info.digest, info.size), "host:5000/app:1")
    assert image.names == ("host:5000/app:1",)
    untagged = store.add_image(Descriptor(OCI_MANIFEST, info.digest, info.size))
    assert untagged.names == ("host:5000/app:1",)  # a tag already keeps it


def test_progress_bars_from_threads() -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    with Progress(console=console) as bar:
        transfers = BarProgress(bar)

        def work(key: str) -> None:
            transfers.begin(key, key, 100)
            for _ in range(10):
                transfers.advance(key, 10)
            transfers.end(key)

        threads = [threading.Thread(target=work, args=(f"blob{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bar.tasks == []
