"""Background completion: the rest of an image's partial layers, fetched while it is in use.

A :class:`Completion` runs on one thread: for each partial layer of the image whose record
allows prefetching (``layerfs pull --lazy --no-prefetch`` records that it does not), it
fetches every missing byte range, prioritised ranges first (eStargz's prioritised files, then
the files a container read first the last time: :func:`~layerfs.lazy.layer.priority_ranges`),
then verifies the blob, moves it into ``blobs/`` and unpacks it into the store's ordinary
layer directory. Readers of the layer keep working throughout: a partial blob that became
complete serves its bytes from ``blobs/``. :meth:`Completion.stop` ends it early; what was
fetched stays and the next completion resumes from there.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from layerfs.lazy.remote import RegistryRemote
from layerfs.store.images import Image
from layerfs.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompletionStatistics:
    """Layers completed so far, the seconds it took (``None`` until done), the error if any."""

    layers: int
    seconds: float | None
    error: str | None


class Completion:
    """Completes *image*'s partial layers on a background thread (see the module docstring)."""

    def __init__(self, store: Store, image: Image, remote: RegistryRemote) -> None:
        self.store = store
        self.image = image
        self.remote = remote
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
            for desc in self.image.layers:
                record = self.store.lazy.record(desc.digest)
                if record is None or not record.prefetch:
                    continue
                self.remote.complete(self.store.lazy, record, self._stop)
                if self._stop.is_set():
                    return
                self.store.finish_partial(record)
                self._layers += 1
            if all(self.store.has_blob(d.digest) for d in self.image.layers):
                self.store.layer_dirs(self.image)
            self._seconds = time.monotonic() - began
        except Exception as exc:  # a boundary: the thread reports, the reader decides
            self._error = str(exc)
            log.error("background completion of %s stopped: %s", self.image.short_id, exc)
        finally:
            self._done.set()
