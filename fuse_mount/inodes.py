"""The kernel's view of nodes: node id -> node, with lookup counts and open pins.

The kernel names objects by the node ids we hand it and tells us, through ``forget``,
when it no longer uses one. A node's id is its inode number (``st_ino``) until it is
*retired* (:meth:`InodeTable.retire`): later replies then name the node by a fresh id, so the
kernel makes a new inode for it while the old one lives on for whoever still holds it (the
native backend's passthrough needs this after a copy-up, see :mod:`fuse_mount.native`).

A node stays in the table while the kernel holds lookups on it or a handle of ours is open
on it, so an unlinked file that is still open keeps working;
:meth:`InodeTable.forget` and :meth:`InodeTable.unpin` are the only ways out.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerfs.errors import oserror

if TYPE_CHECKING:
    from layerfs import Node

log = logging.getLogger(__name__)

ROOT_INODE = 1  # FUSE_ROOT_ID: the kernel's number for the mount's root
_RETIRED_BASE = 1 << 63  # ids of retired nodes' successors: never a stack inode number


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
        self._renamed: dict[int, int] = {}  # st_ino -> the id that now names its node
        self._fresh = itertools.count(_RETIRED_BASE)
        self._lock = threading.Lock()  # worker threads hand out entries too

    def node(self, ino: int) -> Node:
        """The node of *ino*; ``ESTALE`` if the kernel asks for one it has forgotten."""
        try:
            return self._slots[ino].node
        except KeyError:
            raise oserror(errno.ESTALE) from None

    def nodeid(self, node: Node) -> int:
        """The id a reply names *node* by (its inode number unless it was retired)."""
        return self._renamed.get(node.ino, node.ino)

    def remember(self, node: Node) -> int:
        """Count one more kernel lookup of *node* (every reply that hands out an inode);
        returns the node id the reply must carry."""
        with self._lock:
            nodeid = self._renamed.get(node.ino, node.ino)
            slot = self._slots.get(nodeid)
            if slot is None:
                slot = self._slots[nodeid] = _Slot(node)
            elif slot.node is not node:
                # The stack handed out a number the kernel still holds for another object:
                # the newer node is the one reachable by name, so it takes the number over.
                log.warning("inode %d now names %r (was %r)", nodeid, node, slot.node)
                slot.node = node
            slot.lookups += 1
            slot.lower = node.lower_only
            return nodeid

    def retire(self, nodeid: int) -> None:
        """Name the node of *nodeid* by a fresh id in later replies; the old id keeps
        working for the kernel inode that has it, until forgotten."""
        with self._lock:
            slot = self._slots.get(nodeid)
            if slot is not None and nodeid != ROOT_INODE:
                self._renamed[slot.node.ino] = next(self._fresh)

    def became_upper(self, node: Node) -> bool:
        """Whether the kernel holds *node* as lower-only but it is in the upper now; the
        answer is True once per change (the caller then invalidates the kernel's copy)."""
        with self._lock:
            slot = self._slots.get(self._renamed.get(node.ino, node.ino))
            if slot is None or slot.node is not node or not slot.lower or node.lower_only:
                return False
            slot.lower = False
            return True

    def forget(self, ino: int, count: int) -> Node | None:
        """Drop *count* lookups; return the node if nothing references it any more."""
        with self._lock:
            slot = self._slots.get(ino)
            if slot is None or ino == ROOT_INODE:
                return None
            slot.lookups = max(0, slot.lookups - count)
            return self._drop_if_unused(ino, slot)

    def pin(self, ino: int) -> Node:
        """Keep *ino* alive while an open file or directory handle refers to it."""
        with self._lock:
            slot = self._slots.get(ino)
            if slot is None:
                raise oserror(errno.ESTALE)
            slot.pins += 1
            return slot.node

    def unpin(self, ino: int) -> Node | None:
        """Release one :meth:`pin`; return the node if nothing references it any more."""
        with self._lock:
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
        node = slot.node
        other = node.ino if ino != node.ino else self._renamed.get(node.ino, ino)
        if other != ino and other in self._slots:
            return None  # the node's other id is still held by a kernel inode
        self._renamed.pop(node.ino, None)
        return node
