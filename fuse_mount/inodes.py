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


@dataclass(frozen=True, slots=True)
class InodeStatistics:
    """How many inodes the kernel knows, and how many of those are held open by handles."""

    known: int
    pinned: int
    lookups: int


class InodeTable:
    """Inode numbers the kernel holds, each with its node, lookup count and handle pins.

    The kernel may hold a hundred thousand inodes (one large directory listed with
    readdirplus), so the table keeps one dictionary entry per inode and nothing else in the
    common case: lookup counts other than 1, handle pins, and the inodes whose attributes the
    kernel got while they were in the upper are kept in small side tables.
    """

    def __init__(self, root: Node) -> None:
        self._nodes: dict[int, Node] = {ROOT_INODE: root}
        # The kernel holds the root from mount to unmount without looking it up (count 1).
        self._counts: dict[int, int] = {}  # ino -> lookup count, where it is not 1
        self._pins: dict[int, int] = {}  # ino -> open handles, where there are any
        self._upper: set[int] = set() if root.lower_only else {ROOT_INODE}
        self._renamed: dict[int, int] = {}  # st_ino -> the id that now names its node
        self._fresh = itertools.count(_RETIRED_BASE)
        self._lock = threading.Lock()  # worker threads hand out entries too

    def node(self, ino: int) -> Node:
        """The node of *ino*; ``ESTALE`` if the kernel asks for one it has forgotten."""
        try:
            return self._nodes[ino]
        except KeyError:
            raise oserror(errno.ESTALE) from None

    def holds(self, ino: int) -> bool:
        """Whether the kernel (or an open handle) still refers to *ino*."""
        return ino in self._nodes

    def nodeid(self, node: Node) -> int:
        """The id a reply names *node* by (its inode number unless it was retired)."""
        return self._renamed.get(node.ino, node.ino)

    def remember(self, node: Node) -> int:
        """Count one more kernel lookup of *node* (every reply that hands out an inode);
        returns the node id the reply must carry."""
        with self._lock:
            nodeid = self._renamed.get(node.ino, node.ino)
            known = self._nodes.get(nodeid)
            if known is None:
                self._nodes[nodeid] = node  # a new inode: its count is 1
            else:
                if known is not node:
                    # The stack handed out a number the kernel still holds for another
                    # object: the newer node is the one reachable by name, so it takes the
                    # number over.
                    log.warning("inode %d now names %r (was %r)", nodeid, node, known)
                    self._nodes[nodeid] = node
                count = self._counts.get(nodeid, 1) + 1  # from 0 when only pins held it
                if count == 1:
                    self._counts.pop(nodeid, None)
                else:
                    self._counts[nodeid] = count
            if node.lower_only:
                self._upper.discard(nodeid)
            else:
                self._upper.add(nodeid)
            return nodeid

    def retire(self, nodeid: int) -> None:
        """Name the node of *nodeid* by a fresh id in later replies; the old id keeps
        working for the kernel inode that has it, until forgotten."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is not None and nodeid != ROOT_INODE:
                self._renamed[node.ino] = next(self._fresh)

    def became_upper(self, node: Node) -> bool:
        """Whether the kernel holds *node* as lower-only but it is in the upper now; the
        answer is True once per change (the caller then invalidates the kernel's copy)."""
        with self._lock:
            nodeid = self._renamed.get(node.ino, node.ino)
            if self._nodes.get(nodeid) is not node or nodeid in self._upper or node.lower_only:
                return False
            self._upper.add(nodeid)
            return True

    def forget(self, ino: int, count: int) -> Node | None:
        """Drop *count* lookups; return the node if nothing references it any more."""
        with self._lock:
            if ino not in self._nodes or ino == ROOT_INODE:
                return None
            left = max(0, self._counts.get(ino, 1) - count)
            if left == 1:
                self._counts.pop(ino, None)
            else:
                self._counts[ino] = left
            return self._drop_if_unused(ino)

    def pin(self, ino: int) -> Node:
        """Keep *ino* alive while an open file or directory handle refers to it."""
        with self._lock:
            node = self._nodes.get(ino)
            if node is None:
                raise oserror(errno.ESTALE)
            self._pins[ino] = self._pins.get(ino, 0) + 1
            return node

    def unpin(self, ino: int) -> Node | None:
        """Release one :meth:`pin`; return the node if nothing references it any more."""
        with self._lock:
            if ino not in self._nodes:
                return None
            pins = self._pins.get(ino, 0) - 1
            if pins > 0:
                self._pins[ino] = pins
            else:
                self._pins.pop(ino, None)
            return self._drop_if_unused(ino)

    def clear(self) -> list[Node]:
        """Forget everything (after unmount, when the kernel sends no more forgets)."""
        nodes = list(self._nodes.values())
        self._nodes.clear()
        self._counts.clear()
        self._pins.clear()
        self._upper.clear()
        return nodes

    def statistics(self) -> InodeStatistics:
        counts = self._counts
        return InodeStatistics(
            known=len(self._nodes),
            pinned=len(self._pins),
            lookups=sum(counts.get(ino, 1) for ino in self._nodes),
        )

    def _drop_if_unused(self, ino: int) -> Node | None:
        if self._counts.get(ino, 1) or ino in self._pins or ino == ROOT_INODE:
            return None
        node = self._nodes.pop(ino)
        self._counts.pop(ino, None)
        self._upper.discard(ino)
        other = node.ino if ino != node.ino else self._renamed.get(node.ino, ino)
        if other != ino and other in self._nodes:
            return None  # the node's other id is still held by a kernel inode
        self._renamed.pop(node.ino, None)
        return node
