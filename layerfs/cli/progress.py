"""Progress bars on stderr for long commands: drawn when stderr is a terminal, else nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
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

from layerfs.registry.transfers import NoTransfers, Transfers


class BarProgress:
    """Adapts a rich progress bar to the store's ``phase``/``advance`` progress protocol."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._task: TaskID | None = None

    def phase(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._bar.update(self._task, visible=False)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)


@contextmanager
def progress_bar() -> Iterator[BarProgress]:
    """A progress bar on stderr; disabled (silent) unless stderr is a terminal."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with bar:
        yield BarProgress(bar)


class BarTransfers:
    """One rich progress bar per blob; thread-safe (transfers run on worker threads)."""

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
def transfers(quiet: bool) -> Iterator[Transfers]:
    """Progress bars on stderr, or nothing with *quiet* or without a terminal."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield NoTransfers()
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=True,
    )
    with bar:
        yield BarTransfers(bar)


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Callable[[int], None] | None]:
    """A callback advancing a bar on stderr, or None when stderr is not a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
