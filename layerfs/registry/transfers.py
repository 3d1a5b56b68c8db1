"""Transfer plumbing shared by pull and push: bounded parallel jobs that stop together, and a
size-limited stream over a response body."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from layerfs.errors import DigestMismatchError


class Cancelled(Exception):
    """Another transfer of the same operation failed: stop this one."""


class BodyReader(io.RawIOBase):
    """A response body as a read-only stream, never more than *limit* bytes."""

    def __init__(
        self, chunks: Iterator[bytes], limit: int, what: str, stop: threading.Event
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = b""
        self._left = limit
        self._what = what
        self._stop = stop

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._stop.is_set():
            raise Cancelled()
        if not self._pending:
            self._pending = next(self._chunks, b"")
        if len(self._pending) > self._left:
            raise DigestMismatchError(f"{self._what}: registry sent more bytes than its size")
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._left -= n
        return n


def run_parallel(limit: int, jobs: list[Callable[[threading.Event], None]]) -> None:
    """Run *jobs* on at most *limit* threads; the first failure stops the rest and is raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(job: Callable[[threading.Event], None]) -> None:
        if stop.is_set():
            return
        try:
            job(stop)
        except Cancelled:
            return
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    with ThreadPoolExecutor(max_workers=max(1, limit), thread_name_prefix="layerfs-xfer") as pool:
        list(pool.map(run, jobs))
    if errors:
        raise errors[0]
