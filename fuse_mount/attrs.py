"""How long the kernel may cache the names and attributes a reply hands out.

Objects that live only in lower layers cannot change while the stack is mounted (every change
copies them up first), so the kernel may keep their dentries and attributes for a long time.
Objects in the upper layer change only through this mount as well, and each change's reply
updates the kernel's cache, but the upper directory is an ordinary host directory someone may
still edit; their shorter timeout bounds how long such an edit stays invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

UPPER_TIMEOUT = 1.0  # seconds
LOWER_TIMEOUT = 86400.0  # seconds: lower-only objects never change while mounted


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Entry and attribute cache lifetimes (seconds) for upper and lower-only objects."""

    upper: float = UPPER_TIMEOUT
    lower: float = LOWER_TIMEOUT

    def for_object(self, lower_only: bool) -> float:
        return self.lower if lower_only else self.upper
