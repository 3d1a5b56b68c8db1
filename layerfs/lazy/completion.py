"""Background completion: the rest of an image's partial layers, fetched while it is in use.

A :class:`Completion` runs on one thread: for each partial layer of the image whose record
allows prefetching (``layerfs pull --lazy --no-prefetch`` records that it does not), it
fetches every missing byte range, prioritised ranges first (eStargz's prioritised files, then
the files a container read first the last time: :func:`~layerfs.lazy.layer.priority_ranges`),
then verifies the blob, moves it into ``blobs/`` and unpacks it into the store's ordinary
layer directory. Readers of the layer keep working throughout: a partial blob that became
complete serves its bytes from ``blobs/``, and a :class:`~layerfs.lazy.lower.TocLayer` opens
files from the unpacked directory from then on. :meth:`Completion.stop` ends it early; what
was fetched stays and the next completion resumes from there.

With *retry* (seconds), a registry that cannot be reached (a temporary
:class:`RegistryError`) pauses completion that long, and it then goes on where it was; the
remote logs the outage. Without, completion stops at the first error.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from layerfs.errors import RegistryError
from layerfs.lazy.remote import RegistryRemote
from layerfs.store.images import Image
from layerfs.store.partial import LazyRecord
from layerfs.store.store import Store

log = logging.getLogger(__name__)

MOUNT_RETRY = 10.0  # seconds a mount's completion waits before trying an unreachable registry
FIRST_READS = 0.5  # seconds a mount's completion leaves the link to the first reads


@dataclass(frozen=True, slots=True)
class CompletionStatistics:
    """Layers completed so far, the seconds it took (``None`` until done), the error if any."""

    layers: int
    seconds: float | None
    error: str | None


class Completion:
    """Completes *image*'s partial layers on a background thread (see the module docstring)."""

    def __init__(
        self, store: Store, image: Image, remote: RegistryRemote, retry: float | None = None
    ) -> None:
        self.store = store
        self.image = image
        self.remote = remote
        self.retry = retry
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layerfs-complete", daemon=True)
        self._layers = 0
        self._seconds: float | None = None
        self._error: str | None = None

    def start(self) -> Completion:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to stop after the requests under way, and wait for it."""
        self._stop.set()
        self._thread.join()

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until every layer is complete (or completion failed); ``True`` if it ended."""
        return self._done.wait(timeout)

    def statistics(self) -> CompletionStatistics:
        return CompletionStatistics(self._layers, self._seconds, self._error)

    def _run(self) -> None:
        began = time.monotonic()
        try:
            for desc, diff_id in zip(self.image.layers, self.image.diff_ids, strict=True):
                record = self.store.lazy.record(desc.digest)
                if record is None or not record.prefetch:
                    continue
                if not self._fetch(record):
                    return
                self.store.finish_partial(record)
                self.store.layer_dir(desc, diff_id)
                self._layers += 1
            self._seconds = time.monotonic() - began
        except Exception as exc:  # a boundary: the thread reports, the reader decides
            self._error = str(exc)
            log.error("background completion of %s stopped: %s", self.image.short_id, exc)
        finally:
            self._done.set()

    def _fetch(self, record: LazyRecord) -> bool:
        """Fetch the rest of one layer, pausing while its registry is unreachable (with
        :attr:`retry`); False when stopped first."""
        while True:
            try:
                self.remote.complete(self.store.lazy, record, self._stop)
                return not self._stop.is_set()
            except RegistryError as exc:
                if self.retry is None or not exc.temporary:
                    raise
                log.debug("background completion pauses for %gs: %s", self.retry, exc)
            if self._stop.wait(self.retry):
                return False


class MountCompletion:
    """Background completion of an image for as long as a mount serves it.

    A mount service (``fuse_mount.daemon.MountService``): :meth:`start` runs in the serving
    process once the mount is ready and starts a :class:`Completion` that pauses *retry*
    seconds while the registry cannot be reached, and sends nothing in the first
    :data:`FIRST_READS` seconds or while reads fetch (the first command in the container
    usually starts at once, and its reads go first); :meth:`stop` runs after the unmount, stops
    it (what was fetched stays) and closes *remote*, which the mount's partial layers read
    through. Layers pulled with ``--no-prefetch`` are left alone.
    """

    def __init__(
        self, store: Store, image: Image, remote: RegistryRemote, retry: float = MOUNT_RETRY
    ) -> None:
        self.store = store
        self.image = image
        self.remote = remote
        self.retry = retry
        self.completion: Completion | None = None

    def start(self) -> None:
        records = [self.store.lazy.record(d.digest) for d in self.image.layers]
        partial = [r for r in records if r is not None]
        # the first reads of the mount then find their registry client set up
        threading.Thread(target=self._prepare, args=(partial,), daemon=True).start()
        wanted = [r for r in partial if r.prefetch]
        if not wanted:
            return
        self.remote.expect_reads(FIRST_READS)  # a container's first command goes first
        log.info(
            "completing %d partial layer(s) of %s in the background",
            len(wanted),
            self.image.short_id,
        )
        self.completion = Completion(self.store, self.image, self.remote, self.retry).start()

    def _prepare(self, records: list[LazyRecord]) -> None:
        try:
            for record in records:
                self.remote.client(record).prepare()
        except Exception as exc:  # a boundary: the first read then sets it up, or says why
            log.debug("cannot set up the registry client: %s", exc)

    def stop(self) -> None:
        if self.completion is not None:
            self.completion.stop()
        self.remote.close()

    def __repr__(self) -> str:
        return f"<MountCompletion of {self.image.short_id}>"
