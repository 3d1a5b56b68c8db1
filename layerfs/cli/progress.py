"""Progress bars on stderr for long commands: drawn when stderr is a terminal, else nothing.

:class:`BarProgress` is the command line's :class:`layerfs.progress.Progress`: one rich bar
per task, whether the tasks come from tar, the store or a registry transfer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class BarProgress:
    """One rich progress bar per task; thread-safe (a pull moves blobs on worker threads)."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def begin(self, key: str, description: str, total: int | None) -> None:
        with self._lock:
            self._tasks[key] = self._bar.add_task(description, total=total)

    def advance(self, key: str, amount: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
        if task is not None:
            self._bar.advance(task, amount)

    def end(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            self._bar.remove_task(task)


@contextmanager
def progress_bar(*, quiet: bool = False) -> Iterator[BarProgress]:
    """Bars on stderr for the ``with`` block; silent with *quiet* or when stderr is not a
    terminal."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )
    with bar:
        yield BarProgress(bar)
