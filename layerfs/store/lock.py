"""The store's write lock: one ``fcntl.flock`` on ``ROOT/lock``, re-entrant within a process.

Writers (import, tag, commit, gc, unpacking a layer) hold it exclusively for the whole
operation, so two processes never stage into ``tmp/`` or rewrite ``index.json`` at once.
Readers take no lock: blobs and layer directories appear by rename only, complete, and
``index.json`` is replaced atomically.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreLock:
    """An exclusive inter-process lock that the owning process may take recursively."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block, waiting for other processes to release it."""
        with self._mutex:
            self._acquire(blocking=True)
            try:
                yield
            finally:
                self._release()

    def try_acquire(self) -> bool:
        """Take the lock if no other process has it; pair a ``True`` with :meth:`release`."""
        self._mutex.acquire()
        try:
            ok = self._acquire(blocking=False)
        except BaseException:
            self._mutex.release()
            raise
        if not ok:
            self._mutex.release()
        return ok

    def release(self) -> None:
        """Undo one successful :meth:`try_acquire`."""
        self._release()
        self._mutex.release()

    def _acquire(self, *, blocking: bool) -> bool:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1
        return True

    def _release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
