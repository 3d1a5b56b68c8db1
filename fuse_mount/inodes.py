"""The kernel's view of nodes: inode number -> node, with lookup counts and open pins.

The kernel names objects by the inode numbers we hand it and tells us, through ``forget``,
when it no longer uses one. A node stays in the table while the kernel holds lookups on it
or a handle of ours is open on it, so an unlinked file that is still open keeps working;
:meth:`InodeTable.forget` and :meth:`InodeTable.unpin` are the only ways out.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerfs.errors import oserror

if TYPE_CHECKING:
    from layerfs import Node

log = logging.getLogger(__name__)

ROOT_INODE = 1  # FUSE_ROOT_ID: the kernel's number for the mount's root


@dataclass(slots=True)
class _Slot:
    node: Node
    lookups: int = 0
    pins: int = 0
    lower: bool = False  # lower-only when the kernel last got its attributes from a reply


@dataclass(frozen=True, slots=True)
class InodeStatistics:
    """How many inodes the kernel knows, and how many of those are held open by handles."""

    known: int
    pinned: int
    lookups: int


class InodeTable:
    """Inode numbers the kernel holds, each with its node, lookup count and handle pins."""

    def __init__(self, root: Node) -> None:
        # The kernel holds the root from mount to unmount without looking it up.
        self._slots: dict[int, _Slot] = {ROOT_INODE: _Slot(root, lookups=1, lower=root.lower_only)}

    def node(self, ino: int) -> Node:
        """The node of *ino*; ``ESTALE`` if the kernel asks for one it has forgotten."""
        try:
            return self._slots[ino].node
        except KeyError:
            raise oserror(errno.ESTALE) from None

    def remember(self, node: Node) -> int:
        """Count one more kernel lookup of *node* (every reply that hands out an inode)."""
        slot = self._slots.get(node.ino)
        if slot is None:
            slot = self._slots[node.ino] = _Slot(node)
        elif slot.node is not node:
            # The stack handed out a number the kernel still holds for another object: the
            # newer node is the one reachable by name, so it takes the number over.
            log.warning("inode %d now names %r (was %r)", node.ino, node, slot.node)
            slot.node = node
        slot.lookups += 1
        slot.lower = node.lower_only
        return node.ino

    def became_upper(self, node: Node) -> bool:
        """Whether the kernel holds *node* as lower-only but it is in the upper now; the
        answer is True once per change (the caller then invalidates the kernel's copy)."""
        slot = self._slots.get(node.ino)
        if slot is None or slot.node is not node or not slot.lower or node.lower_only:
            return False
        slot.lower = False
        return True

    def forget(self, ino: int, count: int) -> Node | None:
        """Drop *count* lookups; return the node if nothing references it any more."""
        slot = self._slots.get(ino)
        if slot is None or ino == ROOT_INODE:
            return None
        slot.lookups = max(0, slot.lookups - count)
        return self._drop_if_unused(ino, slot)

    def pin(self, ino: int) -> Node:
        """Keep *ino* alive while an open file or directory handle refers to it."""
        slot = self._slots.get(ino)
        if slot is None:
            raise oserror(errno.ESTALE)
        slot.pins += 1
        return slot.node

    def unpin(self, ino: int) -> Node | None:
        """Release one :meth:`pin`; return the node if nothing references it any more."""
        slot = self._slots.get(ino)
        if slot is None:
            return None
        slot.pins = max(0, slot.pins - 1)
        return self._drop_if_unused(ino, slot)

    def clear(self) -> list[Node]:
        """Forget everything (after unmount, when the kernel sends no more forgets)."""
        nodes = [slot.node for slot in self._slots.values()]
        self._slots.clear()
        return nodes

    def statistics(self) -> InodeStatistics:
        return InodeStatistics(
            known=len(self._slots),
            pinned=sum(1 for slot in self._slots.values() if slot.pins),
            lookups=sum(slot.lookups for slot in self._slots.values()),
        )

    def _drop_if_unused(self, ino: int, slot: _Slot) -> Node | None:
        if slot.lookups or slot.pins or ino == ROOT_INODE:
            return None
        del self._slots[ino]
        return slot.node
