"""How long operations report progress: one protocol for tar, the store and the registry.

An operation reports *tasks*: each begins with a description and a total in bytes (or
``None`` when unknown), advances by the bytes done, and ends. Several tasks may run at once
(a pull fetches blobs in parallel), each under its own key, and calls may come from any
thread. layerfs never prints progress: the command line passes a :class:`Progress` that draws
bars on a terminal, library callers pass their own or nothing.

Code that moves bytes (applying or writing a layer tar, copying a blob or a volume) takes the
:class:`Task` its caller began, so the caller names what is going on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


class Progress(Protocol):
    """Receives the progress of long operations. Must be thread-safe."""

    def begin(self, key: str, description: str, total: int | None) -> None:
        """Task *key* starts: *description* for a person, *total* bytes (``None``: unknown)."""

    def advance(self, key: str, amount: int) -> None:
        """*amount* more bytes of task *key* are done."""

    def end(self, key: str) -> None:
        """Task *key* is over (done, failed or about to begin again)."""


class NoProgress:
    """Reports nothing: what an operation uses when its caller passes no :class:`Progress`."""

    def begin(self, key: str, description: str, total: int | None) -> None:
        return None

    def advance(self, key: str, amount: int) -> None:
        return None

    def end(self, key: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Task:
    """One running task of a :class:`Progress`: what code that moves bytes advances."""

    progress: Progress
    key: str

    def advance(self, amount: int) -> None:
        """*amount* more bytes of this task are done."""
        self.progress.advance(self.key, amount)


@contextmanager
def task(
    progress: Progress | None, description: str, total: int | None, *, key: str | None = None
) -> Iterator[Task]:
    """Begin a task of *progress* (keyed by *description* unless *key* is given) for the
    ``with`` block and end it after, whether the block succeeded or raised."""
    reporter = progress if progress is not None else NoProgress()
    name = description if key is None else key
    reporter.begin(name, description, total)
    try:
        yield Task(reporter, name)
    finally:
        reporter.end(name)
