"""A throttling TCP proxy on loopback: a round-trip delay and one shared link of a given rate.

Every chunk a side sends is forwarded one-way delay after it arrived (half the round trip),
paced so that all connections together never exceed the rate in either direction: parallel
requests share the link, as they share a real one. Reading goes on while earlier chunks are
in flight (up to a window), so one connection streams at the link's rate as over a real one.
Used by the lazy-pull benchmark to model a registry across a network (e.g. 20 ms RTT,
100 Mbit/s). It counts the bytes the server sends (:attr:`ThrottleProxy.bytes_down`). A
server that refuses the connection gets the client's connection closed. Its threads stop
with :meth:`ThrottleProxy.stop`.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

BUFFER = 64 << 10  # bytes read at a time
WINDOW = 1 << 20  # bytes in flight per connection and direction (beyond: the reader waits)


class ThrottleProxy:
    """Forwards 127.0.0.1:*port* to *target_port*: *rtt* seconds, *rate* bytes/s each way,
    shared by every connection."""

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
        self._free_at = {True: 0.0, False: 0.0}  # direction (down?) -> when the link is free
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
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()  # the server is gone: so is this connection
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        """Read what *src* sends and queue it for :meth:`_deliver`, which sends each piece
        when the link has carried it: latency delays the data, never the reading (a
        connection streams at the link's rate, not one buffer per round trip)."""
        pending: queue.Queue[tuple[float, bytes] | None] = queue.Queue(WINDOW // BUFFER)
        self._spawn(self._deliver, dst, pending, down)
        try:
            while not self._stop.is_set():
                data = src.recv(BUFFER)
                if not data:
                    break
                arrived = time.monotonic()
                with self._lock:  # queue behind what the link is already carrying
                    free_at = max(self._free_at[down], arrived) + len(data) / self.rate
                    self._free_at[down] = free_at
                pending.put((max(arrived + self.one_way, free_at), data))
        except OSError:
            pass
        finally:
            pending.put(None)

    def _deliver(
        self, dst: socket.socket, pending: queue.Queue[tuple[float, bytes] | None], down: bool
    ) -> None:
        broken = False  # keep taking what the reader queues, so it never waits for us
        while (item := pending.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0 and not broken:
                time.sleep(wait)
            try:
                if not broken:
                    dst.sendall(data)
            except OSError:
                broken = True
                continue
            if down and not broken:
                with self._lock:
                    self.bytes_down += len(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
