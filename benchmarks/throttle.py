"""A throttling TCP proxy on loopback: a round-trip delay and a bandwidth cap per connection.

Every chunk a side sends is forwarded one-way delay after it arrived (half the round trip),
paced so that one connection's direction never exceeds the rate. Used by the lazy-pull
benchmark to model a registry across a network (e.g. 20 ms RTT, 100 Mbit/s). Its threads
stop with :meth:`ThrottleProxy.stop`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

BUFFER = 64 << 10  # bytes read at a time


class ThrottleProxy:
    """Forwards 127.0.0.1:*port* to *target_port*: *rtt* seconds, *rate* bytes/s each way."""

    def __init__(self, target_port: int, rtt: float, rate: float) -> None:
        self.target_port = target_port
        self.one_way = rtt / 2
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.bytes_down = 0

    def __enter__(self) -> ThrottleProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        free_at = 0.0  # when this direction's link is free again
        try:
            while not self._stop.is_set():
                data = src.recv(BUFFER)
                if not data:
                    break
                arrived = time.monotonic()
                free_at = max(free_at, arrived) + len(data) / self.rate
                wait = max(arrived + self.one_way, free_at) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
                if down:
                    with self._lock:
                        self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
