"""Byte ranges of registry blobs: Debian's docker-registry serves them, faults stay bounded.

A registry that goes away, stalls mid-response or cuts a connection gives a read a
:class:`RegistryError` within the configured time (``pytest-timeout`` fails the test on a
hang), and a later read succeeds once the registry is back. A registry that ignores ``Range``
(our bearer-token registry answers 200) still gives the right bytes; an expired token is
renewed; a mirror is used like a pull uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from layerfs.errors import RegistryError
from layerfs.registry import Credentials, Options
from layerfs.registry.config import save_credentials
from layerfs.registry.ranges import RangeClient, RangeOptions
from layerfs.registry.reference import parse_remote
from tests.registry.servers import BearerRegistry, FaultProxy, RegistryServer, free_port

from .conftest import Images
from .tools import push_gzip

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.interop, pytest.mark.timeout(120)]

QUICK = RangeOptions(timeout=2.0, retry_delay=0.05)


def first_layer(ref: str) -> tuple[str, int]:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    layer = httpx.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers=headers).json()
    return layer["layers"][0]["digest"], layer["layers"][0]["size"]


def whole(ref: str, digest: str) -> bytes:
    host, _, rest = ref.partition("/")
    return httpx.get(f"http://{host}/v2/{rest.rpartition(':')[0]}/blobs/{digest}").content


@pytest.fixture
def own_registry(tmp_path: Path, images: Images) -> Iterator[RegistryServer]:
    """A registry of this test's own (it may be killed), holding the gzip image."""
    with RegistryServer(tmp_path / "own-registry") as server:
        push_gzip(images.layout, "lazy", server, "lazy/app:gzip")
        yield server


def client_for(host: str, ranges: RangeOptions = QUICK) -> RangeClient:
    return RangeClient(parse_remote(f"{host}/lazy/app:gzip"), Options(insecure=True), ranges)


def test_registry_serves_ranges_and_adjacent_ones_are_merged(images: Images) -> None:
    digest, size = first_layer(images.gzip)
    data = whole(images.gzip, digest)
    with client_for(images.gzip.partition("/")[0]) as client:
        assert client.read(digest, 0, 10) == data[:10]
        assert client.read(digest, size - 7, size) == data[-7:]
        spans = [(100, 200), (200, 5000), (7000, 7001)]
        before = client.statistics().requests
        assert client.read_ranges(digest, spans) == [data[s:e] for s, e in spans]
        assert client.statistics().requests - before == 2  # 100-5000 and 7000-7001


def test_cut_connection_is_retried_within_the_read(own_registry: RegistryServer) -> None:
    digest, size = first_layer(f"{own_registry.host}/lazy/app:gzip")
    data = whole(f"{own_registry.host}/lazy/app:gzip", digest)
    with FaultProxy(own_registry.port) as proxy, client_for(proxy.host) as client:
        proxy.arm(drop_after_down=2000)
        assert client.read(digest, 0, size) == data
        assert proxy.dropped.is_set() and client.statistics().failures >= 1


def test_registry_gone_fails_the_read_in_bounded_time_then_recovers(
    own_registry: RegistryServer,
) -> None:
    ref = f"{own_registry.host}/lazy/app:gzip"
    digest, size = first_layer(ref)
    data = whole(ref, digest)
    with FaultProxy(own_registry.port) as proxy, client_for(proxy.host) as client:
        proxy.arm(drop_after_down=50_000, on_drop=own_registry.kill)
        with pytest.raises(RegistryError, match="no answer within 2s") as caught:
            client.read(digest, 0, size)
        assert caught.value.temporary and "\n" not in str(caught.value)
        own_registry.start()
        proxy.disarm()
        assert client.read(digest, 0, size) == data


def test_stalled_registry_fails_the_read_in_bounded_time(own_registry: RegistryServer) -> None:
    ref = f"{own_registry.host}/lazy/app:gzip"
    digest, size = first_layer(ref)
    data = whole(ref, digest)
    with FaultProxy(own_registry.port) as proxy, client_for(proxy.host) as client:
        proxy.arm(stall_after_down=10_000)
        with pytest.raises(RegistryError, match="no answer within"):
            client.read(digest, 0, size)
        assert proxy.stalled.is_set()
        proxy.disarm()
        assert client.read(digest, 1000, 2000) == data[1000:2000]


def test_expired_token_is_renewed_and_a_200_answer_is_cut(images: Images) -> None:
    digest, _ = first_layer(images.gzip)
    data = whole(images.gzip, digest)
    with BearerRegistry(images.layout, "alice", "secret") as bearer:
        save_credentials(bearer.host, Credentials("alice", "secret"))
        with client_for(bearer.host) as client:
            assert client.read(digest, 10, 20) == data[10:20]
            issued = len(bearer.token_requests)
            bearer.revoke()
            assert client.read(digest, 30, 40) == data[30:40]
            assert len(bearer.token_requests) == issued + 1


def test_mirror_is_used_like_a_pull(images: Images, isolated_config: Path) -> None:
    digest, _ = first_layer(images.gzip)
    data = whole(images.gzip, digest)
    dead = f"127.0.0.1:{free_port()}"
    isolated_config.mkdir(parents=True, exist_ok=True)
    mirrors = {"mirrors": {dead: [f"http://{images.gzip.partition('/')[0]}"]}, "insecure": [dead]}
    (isolated_config / "registries.json").write_text(json.dumps(mirrors))
    with client_for(dead) as client:
        assert client.read(digest, 5, 50) == data[5:50]
