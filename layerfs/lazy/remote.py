"""The registry side of partial layers: range clients per source, completion, layer readers.

:class:`RegistryRemote` is what a store's :attr:`~layerfs.store.Store.remote` is set to so
that operations needing whole blobs (unpack, export, commit, squash, push, creating a
container) complete partial layers: it fetches every missing byte range of a layer blob,
prioritised files first (:func:`~layerfs.lazy.layer.priority_ranges`), in requests of at
most :attr:`RangeOptions.max_request` bytes, *parallel* at a time. It also opens
:class:`~layerfs.lazy.layer.LazyLayer` readers that share its connections.

When range reads from a registry start failing (it is down, stalls, or refuses), the remote
logs one error line for that registry, and one more when reads from it work again: a mount
whose registry goes away says so once, not at every read that then fails. Reads in the
seconds right after a failure fail at once (:class:`Outage`); later ones try again.

Reads someone waits for (they come with a deadline) go first: completion sends its next
request only once no such read has fetched for :data:`READ_QUIET` seconds, and its requests
are small (:data:`COMPLETION_REQUEST`), so a read queues behind little of its data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from layerfs.errors import LayerFormatError, RegistryError
from layerfs.layer import LayerSource
from layerfs.lazy.layer import ChunkMemory, LazyLayer, RangeFiller, priority_ranges
from layerfs.lazy.lower import TocLayer
from layerfs.lazy.tree import build_tree, unpacking_owner
from layerfs.privilege import is_host_root, layer_format
from layerfs.registry.client import Options
from layerfs.registry.ranges import RangeClient, RangeOptions, RangeStatistics
from layerfs.registry.reference import parse_remote
from layerfs.registry.transfers import run_parallel
from layerfs.store.partial import LazyRecord, LazyStore, PartialBlob

log = logging.getLogger(__name__)
COMPLETION_REQUEST = 1 << 20  # bytes per range request while completing a layer
COMPLETION_PARALLEL = 3  # range requests at once while completing a layer
FAIL_FAST = 2.0  # seconds after a failed range read during which others fail at once
READ_QUIET = 0.25  # seconds without reads before completion sends its next request


@dataclass(frozen=True, slots=True)
class CompletionOptions:
    """How background and on-demand completion fetch: request size and parallelism."""

    request: int = COMPLETION_REQUEST
    parallel: int = COMPLETION_PARALLEL


class Outage:
    """Whether range reads from one registry fail, logged once each way (thread-safe).

    For :data:`FAIL_FAST` seconds after a failure, :meth:`check` fails the next reads at once:
    the kernel repeats a failed read (its read-ahead, then the page itself), and a registry
    that just failed to answer within the whole time bound would make the reader wait twice.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.down = False
        self._failed_at = 0.0
        self._error = ""
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise a temporary :class:`RegistryError` if reads failed less than
        :data:`FAIL_FAST` seconds ago."""
        with self._lock:
            recent = self.down and time.monotonic() - self._failed_at < FAIL_FAST
            error = self._error
        if recent:
            raise RegistryError(f"{self.source} failed just now: {error}", temporary=True)

    def failed(self, exc: RegistryError) -> None:
        with self._lock:
            was, self.down = self.down, True
            self._failed_at, self._error = time.monotonic(), str(exc)
        if not was:
            log.error(
                "range reads from %s fail, content that is not local cannot be read: %s",
                self.source,
                exc,
            )

    def worked(self) -> None:
        with self._lock:
            was, self.down = self.down, False
        if was:
            log.info("range reads from %s work again", self.source)


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
        self._outages: dict[str, Outage] = {}
        self.memory = ChunkMemory()  # decoded chunks, shared by the layers it opens
        self._reading = 0  # reads fetching now; completion waits for them ...
        self._reads_until = 0.0  # ... and until then after the last one
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

    def outage(self, record: LazyRecord) -> Outage:
        """The failure state of the registry *record* was pulled from (shared)."""
        with self._lock:
            return self._outages.setdefault(record.source, Outage(record.source))

    def filler(self, lazy: LazyStore, record: LazyRecord) -> RangeFiller:
        """The one :class:`RangeFiller` of the layer blob (reads and completion share it)."""
        digest = record.descriptor.digest
        client = self.client(record)
        outage = self.outage(record)

        def fetch(spans: list[tuple[int, int]], deadline: float | None) -> list[bytes]:
            outage.check()
            waited_for = deadline is not None  # a read someone waits for: completion steps aside
            if waited_for:
                self._reads_begin()
            try:
                data = client.read_ranges(digest, spans, deadline)
            except RegistryError as exc:
                outage.failed(exc)
                raise
            finally:
                if waited_for:
                    self._reads_end()
            outage.worked()
            return data

        with self._lock:
            found = self._fillers.get(digest)
            if found is None:
                found = RangeFiller(lazy.partial(record.descriptor), fetch)
                self._fillers[digest] = found
            return found

    def layer(self, lazy: LazyStore, record: LazyRecord) -> LazyLayer:
        """A reader of the partial layer *record* (which must have a TOC)."""
        toc = lazy.toc(record)
        if toc is None:
            raise LayerFormatError(f"layer {record.descriptor.digest} has no TOC")
        return LazyLayer(lazy, self.filler(lazy, record), toc, memory=self.memory)

    def toc_layer(self, lazy: LazyStore, record: LazyRecord, local_dir: Path) -> TocLayer:
        """The partial layer *record* (which must have a TOC) as a lower layer of a stack;
        *local_dir* is where the store unpacks it once it is complete."""
        reader = self.layer(lazy, record)
        owner, devices = unpacking_owner(), is_host_root()  # as unpacking does
        tree = build_tree(reader.toc, layer_format(), owner, devices=devices)
        return TocLayer(
            tree,
            reader,
            local_dir=local_dir,
            statfs_path=lazy.root,
            timeout=self.ranges.timeout,
        )

    def layer_source(self, lazy: LazyStore, record: LazyRecord, local_dir: Path) -> LayerSource:
        """The partial layer *record* as a stack description names it (see :meth:`toc_layer`)."""
        return PartialLayerSource(self, lazy, record, local_dir)

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
                self._wait_reads_quiet(halt)
                if not (halt.is_set() or failed.is_set()):
                    filler.ensure_ranges([span])

            return run

        requests = _requests(partial, order, self.completion.request)
        run_parallel(self.completion.parallel, [job(span) for span in requests])

    def expect_reads(self, seconds: float) -> None:
        """Reads are coming (a mount just became ready): completion sends nothing for
        *seconds*, nor until the reads that come meanwhile are over."""
        with self._lock:
            self._reads_until = max(self._reads_until, time.monotonic() + seconds)

    def _reads_begin(self) -> None:
        with self._lock:
            self._reading += 1

    def _reads_end(self) -> None:
        with self._lock:
            self._reading -= 1
            self._reads_until = time.monotonic() + READ_QUIET

    def _wait_reads_quiet(self, halt: threading.Event) -> None:
        """Wait until no read is fetching and none has for :data:`READ_QUIET` seconds (or
        *halt*)."""
        while True:
            with self._lock:
                left = READ_QUIET if self._reading else self._reads_until - time.monotonic()
            if left <= 0 or halt.wait(left):
                return


class PartialLayerSource:
    """A partial layer of a store with a TOC, opened as a :class:`TocLayer` for each stack."""

    def __init__(
        self, remote: RegistryRemote, lazy: LazyStore, record: LazyRecord, local_dir: Path
    ) -> None:
        self.remote = remote
        self.lazy = lazy
        self.record = record
        self.local_dir = local_dir
        self.description = f"{record.descriptor.digest} (partial layer)"

    def open(self) -> TocLayer:
        return self.remote.toc_layer(self.lazy, self.record, self.local_dir)

    def __repr__(self) -> str:
        return f"<PartialLayerSource {self.description}>"


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
