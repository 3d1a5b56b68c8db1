"""A :class:`layerfs.progress.Progress` that records what it is told, for assertions."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class RecordedTask:
    """One task as reported: its description, total, the amounts advanced, whether ended."""

    description: str
    total: int | None
    amounts: list[int] = field(default_factory=list)
    ended: bool = False

    @property
    def done(self) -> int:
        return sum(self.amounts)


class RecordingProgress:
    """Records every task under its key (the last one, when a key begins again). Thread-safe."""

    def __init__(self) -> None:
        self.tasks: dict[str, RecordedTask] = {}
        self.began: list[str] = []
        self._lock = threading.Lock()

    def begin(self, key: str, description: str, total: int | None) -> None:
        with self._lock:
            current = self.tasks.get(key)
            assert current is None or current.ended, f"task {key} began twice"
            self.tasks[key] = RecordedTask(description, total)
            self.began.append(key)

    def advance(self, key: str, amount: int) -> None:
        with self._lock:
            assert not self.tasks[key].ended, f"task {key} advanced after its end"
            self.tasks[key].amounts.append(amount)

    def end(self, key: str) -> None:
        with self._lock:
            self.tasks[key].ended = True

    def all_ended(self) -> bool:
        return all(t.ended for t in self.tasks.values())
