"""How long store operations report progress: phases with a byte total, advanced in bytes.

The store never prints; the CLI passes an object that drives a progress bar (silent when not
on a terminal), tests pass nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of a long store operation."""

    def phase(self, description: str, total: int | None) -> None:
        """A new step starts (``total`` bytes, or unknown)."""

    def advance(self, amount: int) -> None:
        """*amount* more bytes of the current step are done."""


class NoProgress:
    """The default: reports nothing."""

    def phase(self, description: str, total: int | None) -> None:
        return None

    def advance(self, amount: int) -> None:
        return None
