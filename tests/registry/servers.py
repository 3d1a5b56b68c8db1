"""Servers the registry tests start, all on 127.0.0.1 and all stopped by their owner.

* :class:`RegistryServer`: Debian's ``docker-registry`` as a subprocess (filesystem storage in
  a temporary directory; optional htpasswd auth, pull-through proxy, relative URLs); it can be
  killed and started again on the same port with the same storage.
* :class:`FaultProxy`: a TCP forwarder in front of a server that, once armed, drops every
  connection after a number of bytes (optionally calling back, e.g. to kill the registry),
  flips one byte of what the server sends (or the last byte of every piece it sends, until
  disarmed), or stops forwarding what the server sends while
  keeping the connection open (a registry that stalls mid-response). Faults count bytes
  from arming on, so they hit range responses as well as whole blobs. Its threads stop with
  it, or by themselves after a deadline.
* :class:`BearerRegistry`: a minimal registry of our own that demands a bearer token from its
  own token endpoint, for the token flow (the packaged registry's token auth needs signed JWTs).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
READY_TIMEOUT = 30.0  # seconds
PROXY_LIFETIME = 300.0  # seconds after which a forgotten proxy shuts itself down


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RegistryServer:
    """One ``docker-registry`` process on 127.0.0.1:*port*."""

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd: Path | None = None,
        proxy_remote: str | None = None,
        relative_urls: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = workdir / "registry.log"
        self.config = workdir / "config.yml"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {workdir / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
            f"  relativeurls: {'true' if relative_urls else 'false'}",
        ]
        if htpasswd is not None:
            lines += ["auth:", "  htpasswd:", "    realm: layerfs-test", f"    path: {htpasswd}"]
        if proxy_remote is not None:
            lines += ["proxy:", f"  remoteurl: {proxy_remote}"]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/v2/", timeout=2).status_code in (200, 401):
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("docker-registry did not become ready")

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL the process (a registry that goes away) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def htpasswd_file(path: Path, user: str, password: str) -> Path:
    out = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout
    path.write_text(out.strip() + "\n")
    return path


class FaultProxy:
    """Forwards 127.0.0.1:*port* to *target_port*; see the module docstring for the faults."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + PROXY_LIFETIME
        self.up = 0  # bytes client -> server since arming
        self.down = 0  # bytes server -> client since arming
        self._drop_up: int | None = None
        self._drop_down: int | None = None
        self._corrupt_down: int | None = None
        self._stall_down: int | None = None
        self._corrupt_all = False
        self._on_drop: Callable[[], None] | None = None
        self.dropped = threading.Event()
        self.corrupted = threading.Event()
        self.stalled = threading.Event()
        self._unstall = threading.Event()

    def __enter__(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def arm(
        self,
        *,
        drop_after_up: int | None = None,
        drop_after_down: int | None = None,
        corrupt_down_at: int | None = None,
        stall_after_down: int | None = None,
        corrupt_down_all: bool = False,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        """Reset the counters and set a one-shot fault (a stall, and corrupting everything,
        last until the next arm)."""
        with self._lock:
            self._corrupt_all = corrupt_down_all
            self.up = self.down = 0
            self._drop_up, self._drop_down = drop_after_up, drop_after_down
            self._corrupt_down, self._on_drop = corrupt_down_at, on_drop
            self._stall_down = stall_after_down
            self.dropped.clear()
            self.corrupted.clear()
            self.stalled.clear()
            self._unstall.set()
            self._unstall = threading.Event()

    def disarm(self) -> None:
        self.arm()

    def stop(self) -> None:
        self._stop.set()
        self._unstall.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._close_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)
        self._close_all()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                data, drop, stall = self._account(data, upward)
                if data:
                    dst.sendall(data)
                if stall is not None:
                    self.stalled.set()
                    stall.wait(PROXY_LIFETIME)  # hold the connection, forward nothing more
                    return
                if drop:
                    self._fault()
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _account(self, data: bytes, upward: bool) -> tuple[bytes, bool, threading.Event | None]:
        """Count *data*; return what to forward, whether to drop everything now, and the
        event that ends a stall when this connection must stall."""
        with self._lock:
            before = self.up if upward else self.down
            after = before + len(data)
            limit = self._drop_up if upward else self._drop_down
            corrupt = None if upward else self._corrupt_down
            if upward:
                self.up = after
            else:
                self.down = after
            if not upward and self._corrupt_all and data:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
                self.corrupted.set()
            if corrupt is not None and before <= corrupt < after:
                pos = corrupt - before
                data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
                self._corrupt_down = None
                self.corrupted.set()
            stall = None if upward else self._stall_down
            if stall is not None and after > stall:
                return data[: max(0, stall - before)], False, self._unstall
            if limit is not None and after > limit:
                if upward:
                    self._drop_up = None
                else:
                    self._drop_down = None
                return data[: max(0, limit - before)], True, None
        return data, False, None

    def _fault(self) -> None:
        callback = self._on_drop
        self._close_all()
        if callback is not None:
            callback()
        self.dropped.set()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            # shutdown() wakes a pump thread blocked in recv() on it (close() alone would
            # not, and the peer would see nothing until its timeout).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class BearerRegistry:
    """A read-only registry of our own behind a bearer-token challenge.

    ``/token`` accepts basic auth *user*/*password* (or anonymous requests when *anonymous*)
    and issues a token for the scopes asked; ``/v2/...`` demands a token whose scopes include
    ``repository:<name>:pull`` and serves manifests and blobs of an OCI layout.
    """

    def __init__(self, layout: Path, user: str, password: str, anonymous: bool = False) -> None:
        self.layout = layout
        self.user, self.password, self.anonymous = user, password, anonymous
        self.token_requests: list[dict[str, list[str]]] = []
        self.tags: dict[tuple[str, str], bytes] = {}
        self._tokens: dict[str, set[str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> BearerRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def revoke(self) -> None:
        """Forget every token issued (they expire): clients must ask for new ones."""
        self._tokens.clear()

    def blob(self, digest: str) -> bytes | None:
        path = self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        return path.read_bytes() if digest.startswith("sha256:") and path.is_file() else None

    def _issue(self, query: dict[str, list[str]], authorization: str | None) -> str | None:
        self.token_requests.append(query)
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if authorization != f"Basic {expected}" and not (self.anonymous and not authorization):
            return None
        token = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()
        self._tokens[token] = set(query.get("scope", []))
        return token

    def _allowed(self, authorization: str | None, name: str) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        scopes = self._tokens.get(authorization[7:], set())
        return any(
            s.startswith(f"repository:{name}:") and "pull" in s.rsplit(":", 1)[1].split(",")
            for s in scopes
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                auth = self.headers.get("Authorization")
                if url.path == "/token":
                    token = registry._issue(parse_qs(url.query), auth)
                    if token is None:
                        self._send(401, b'{"details":"bad credentials"}', {})
                    else:
                        self._send(200, json.dumps({"token": token}).encode(), {})
                    return
                self._registry(url.path, auth)

            def _registry(self, path: str, auth: str | None) -> None:
                parts = path.split("/")
                name = "/".join(parts[2:-2]) if len(parts) > 4 else ""
                scope = f"repository:{name}:pull" if name else ""
                if path == "/v2/":
                    ok = (auth or "").removeprefix("Bearer ") in registry._tokens
                else:
                    ok = registry._allowed(auth, name)
                if not ok:
                    challenge = (
                        f'Bearer realm="http://{registry.host}/token",service="fake-registry"'
                    )
                    if scope:
                        challenge += f',scope="{scope}"'
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}'
                    self._send(401, body, {"WWW-Authenticate": challenge})
                    return
                if path == "/v2/":
                    self._send(200, b"{}", {})
                    return
                kind, ref = parts[-2], parts[-1]
                data = registry.tags.get((name, ref)) if kind == "manifests" else None
                data = data if data is not None else registry.blob(ref)
                if data is None:
                    self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', {})
                    return
                headers = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest()}
                if kind == "manifests":
                    headers["Content-Type"] = json.loads(data).get("mediaType", "")
                self._send(200, data, headers)

        return Handler
