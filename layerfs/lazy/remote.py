"""The registry side of partial layers: range clients per source, completion, layer readers.

:class:`RegistryRemote` is what a store's :attr:`~layerfs.store.Store.remote` is set to so
that operations needing whole blobs (unpack, export, commit, squash, push, creating a
container) complete partial layers: it fetches every missing byte range of a layer blob,
prioritised files first (:func:`~layerfs.lazy.layer.priority_ranges`), in requests of at
most :attr:`RangeOptions.max_request` bytes, *parallel* at a time. It also opens
:class:`~layerfs.lazy.layer.LazyLayer` readers that share its connections.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from layerfs.errors import LayerFormatError
from layerfs.lazy.layer import LazyLayer, RangeFiller, priority_ranges
from layerfs.registry.client import Options
from layerfs.registry.ranges import RangeClient, RangeOptions, RangeStatistics
from layerfs.registry.reference import parse_remote
from layerfs.registry.transfers import run_parallel
from layerfs.store.partial import LazyRecord, LazyStore, PartialBlob

COMPLETION_REQUEST = 4 << 20  # bytes per range request while completing a layer
COMPLETION_PARALLEL = 3  # range requests at once while completing a layer


@dataclass(frozen=True, slots=True)
class CompletionOptions:
    """How background and on-demand completion fetch: request size and parallelism."""

    request: int = COMPLETION_REQUEST
    parallel: int = COMPLETION_PARALLEL


class RegistryRemote:
    """Completes and reads partial layers from the registries they were pulled from.

    *options* supplies the config directory (credentials, mirrors) and retry settings; each
    layer's own record says whether its registry is reached by plain HTTP.
    """

    def __init__(
        self,
        options: Options | None = None,
        ranges: RangeOptions | None = None,
        completion: CompletionOptions | None = None,
    ) -> None:
        self.options = options or Options()
        self.ranges = ranges or RangeOptions()
        self.completion = completion or CompletionOptions()
        self._clients: dict[tuple[str, bool], RangeClient] = {}
        self._fillers: dict[str, RangeFiller] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RegistryRemote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def statistics(self) -> RangeStatistics:
        """Requests and bytes fetched through every client of this remote so far."""
        with self._lock:
            stats = [c.statistics() for c in self._clients.values()]
        return RangeStatistics(
            sum(s.requests for s in stats),
            sum(s.bytes for s in stats),
            sum(s.failures for s in stats),
        )

    def client(self, record: LazyRecord) -> RangeClient:
        """The range client for the repository *record* was pulled from (shared)."""
        key = (record.source, record.insecure)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                remote = parse_remote(record.source)
                options = replace(self.options, insecure=record.insecure)
                found = RangeClient(remote, options, self.ranges)
                self._clients[key] = found
            return found

    def filler(self, lazy: LazyStore, record: LazyRecord) -> RangeFiller:
        """The one :class:`RangeFiller` of the layer blob (reads and completion share it)."""
        digest = record.descriptor.digest
        client = self.client(record)
        with self._lock:
            found = self._fillers.get(digest)
            if found is None:
                fetch = functools.partial(client.read_ranges, digest)
                found = RangeFiller(lazy.partial(record.descriptor), fetch)
                self._fillers[digest] = found
            return found

    def layer(self, lazy: LazyStore, record: LazyRecord) -> LazyLayer:
        """A reader of the partial layer *record* (which must have a TOC)."""
        toc = lazy.toc(record)
        if toc is None:
            raise LayerFormatError(f"layer {record.descriptor.digest} has no TOC")
        return LazyLayer(lazy, self.filler(lazy, record), toc)

    def complete(
        self, lazy: LazyStore, record: LazyRecord, stop: threading.Event | None = None
    ) -> None:
        """Fetch every missing byte of the layer blob, prioritised ranges first.

        With *stop* set midway, returns early (what was fetched stays).
        """
        filler = self.filler(lazy, record)
        partial = filler.partial
        toc = lazy.toc(record)
        order = priority_ranges(toc, lazy.read_order(record.descriptor.digest), partial.size)
        halt = stop or threading.Event()

        def job(span: tuple[int, int]) -> Callable[[threading.Event], None]:
            def run(failed: threading.Event) -> None:
                if not (halt.is_set() or failed.is_set()):
                    filler.ensure_ranges([span])

            return run

        requests = _requests(partial, order, self.completion.request)
        run_parallel(self.completion.parallel, [job(span) for span in requests])


def _requests(
    partial: PartialBlob, order: list[tuple[int, int]], size: int
) -> list[tuple[int, int]]:
    """The missing parts of *order*, kept in order, cut or joined into requests near *size*."""
    out: list[tuple[int, int]] = []
    for start, end in order:
        for piece_start, piece_end in partial.missing(start, end):
            pos = piece_start
            while pos < piece_end:
                stop = min(piece_end, pos + size)
                if out and out[-1][1] == pos and stop - out[-1][0] <= size:
                    out[-1] = (out[-1][0], stop)
                else:
                    out.append((pos, stop))
                pos = stop
    return out
