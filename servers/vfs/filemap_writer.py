"""The kernel's side of the FileMap: planned lock-free inserts, removes and clears.

The layout, the update protocol and the reader are in ``filemap.py``; this module
plans every update as a list of :class:`~servers.vfs.filemap.Store` steps and applies
them (the interleaving tests apply the same plans step by step).
"""

from __future__ import annotations

import bisect
import errno
import heapq
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from servers.vfs.filemap import (
    FILEMAP_SIZE,
    MAX_PARTS,
    FileMapCorrupt,
    FileMapFull,
    InvalidPart,
    Part,
    PartOverlap,
    Store,
    Words,
    base_offset,
    check_filemap,
    check_part,
    position_offset,
    read_part,
    size_offset,
    slot_offset,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

# ---------------------------------------------------------------------------------------
# Update plans: pure functions of the kernel's own view of the map (the only writer).


def plan_insert(order: Sequence[int], rank: int, index: int, part: Part) -> list[Store]:
    """Stores that link ``part`` as ``index`` at sorted slot ``rank`` of ``order``.

    The entry is complete (size last) before any slot can name it, and the slots are
    shifted from the top down, so every intermediate array is sorted with one duplicate.
    """
    stores = [
        Store(position_offset(index), 8, part.position),
        Store(base_offset(index), 4, part.base),
        Store(size_offset(index), 4, part.size),
    ]
    stores.extend(
        Store(slot_offset(slot), 2, order[slot - 1]) for slot in range(len(order), rank, -1)
    )
    stores.append(Store(slot_offset(rank), 2, index))
    return stores


def plan_remove(order: Sequence[int], rank: int) -> list[Store]:
    """Stores that unlink the part at sorted slot ``rank``; its entry stays readable.

    Each slot from ``rank`` up takes its successor's value (a duplicate, never a gap),
    then the last used slot is zeroed.
    """
    last = len(order) - 1
    stores = [Store(slot_offset(slot), 2, order[slot + 1]) for slot in range(rank, last)]
    stores.append(Store(slot_offset(last), 2, 0))
    return stores


def plan_clear(index: int) -> list[Store]:
    """Stores that clear an unlinked entry: size first, so a late reader fails its range check."""
    return [Store(size_offset(index), 4, 0), Store(base_offset(index), 4, 0)]


def apply_stores(words: Words, stores: Sequence[Store]) -> None:
    """Apply update steps one by one, in order."""
    for step in stores:
        words.store(step)


# ---------------------------------------------------------------------------------------
# The kernel side.


_EMPTY_MAP = bytes(FILEMAP_SIZE)


class FileMapWriter:
    """The kernel's side of one FileMap: inserts, removes and clears parts lock-free.

    The writer keeps its own copy of the map's state (slot order, parts, free indexes) so
    that it never has to read the shared page back. A buffer that already holds a map is
    adopted: linked parts stay linked, unlinked non-empty entries are treated as retired
    (still in their grace period).
    """

    def __init__(self, buf: Buffer) -> None:
        self._words = Words(buf, writable=True)
        self._order: list[int] = []
        self._starts: list[int] = []
        self._parts: dict[int, Part] = {}
        self._retired: dict[int, Part] = {}
        self._free: list[int] = []
        self._adopt()

    def _adopt(self) -> None:
        """Rebuild the bookkeeping from the page, refusing a page that breaks invariants."""
        if self._words.raw.tobytes() == _EMPTY_MAP:  # a fresh page: every index is free
            self._free = list(range(1, MAX_PARTS + 1))
            return
        try:
            linked = check_filemap(self._words.raw)
        except FileMapCorrupt:
            self._words.release()
            raise
        for index, part in linked:
            self._order.append(index)
            self._starts.append(part.position)
            self._parts[index] = part
        for index in range(1, MAX_PARTS + 1):
            if index in self._parts:
                continue
            entry = read_part(self._words.raw, index)
            if entry.size or entry.base:
                self._retired[index] = entry
            else:
                self._free.append(index)
        heapq.heapify(self._free)

    # -- planning: each returns the stores and commits the writer's bookkeeping; the
    #    caller must apply the stores in order before planning anything else.

    def insert_steps(self, position: int, size: int, base: int) -> tuple[int, list[Store]]:
        """Plan linking a new part; returns its index and the stores to apply."""
        check_part(position, size, base)
        rank = self._rank_for(position, size)
        if not self._free:
            raise FileMapFull(
                errno.ENOSPC,
                f"FileMap is full: {len(self._order)} parts linked, "
                f"{len(self._retired)} waiting for their grace period",
            )
        index = heapq.heappop(self._free)
        part = Part(position, size, base)
        stores = plan_insert(self._order, rank, index, part)
        self._order.insert(rank, index)
        self._starts.insert(rank, position)
        self._parts[index] = part
        return index, stores

    def remove_steps(self, index: int) -> list[Store]:
        """Plan unlinking part ``index``; its entry stays valid until ``clear_part``."""
        part = self._parts.get(index)
        if part is None:
            raise InvalidPart(errno.ENOENT, f"part index {index} is not linked")
        rank = bisect.bisect_left(self._starts, part.position)
        stores = plan_remove(self._order, rank)
        del self._order[rank], self._starts[rank], self._parts[index]
        self._retired[index] = part
        return stores

    def clear_steps(self, index: int) -> list[Store]:
        """Plan clearing retired entry ``index``; the index is free once the stores land."""
        if index not in self._retired:
            raise InvalidPart(errno.EINVAL, f"part index {index} is not waiting for a clear")
        del self._retired[index]
        heapq.heappush(self._free, index)
        return plan_clear(index)

    def _rank_for(self, position: int, size: int) -> int:
        """Sorted slot for a part at ``position``; raises if it overlaps a linked part."""
        rank = bisect.bisect_right(self._starts, position)
        if rank > 0:
            before = self._parts[self._order[rank - 1]]
            if before.end > position:
                raise PartOverlap(
                    errno.EEXIST, f"[{position}, +{size}) overlaps linked part {before}"
                )
        if rank < len(self._order) and self._starts[rank] < position + size:
            after = self._parts[self._order[rank]]
            raise PartOverlap(errno.EEXIST, f"[{position}, +{size}) overlaps linked part {after}")
        return rank

    # -- applying

    def insert(self, position: int, size: int, base: int) -> int:
        """Link a new part and return its 1-based index."""
        index, stores = self.insert_steps(position, size, base)
        apply_stores(self._words, stores)
        return index

    def remove(self, index: int) -> Part:
        """Unlink part ``index`` and return it; call ``clear_part`` after the grace period."""
        apply_stores(self._words, self.remove_steps(index))
        return self._retired[index]

    def clear_part(self, index: int) -> None:
        """Clear a removed part's entry (after its grace period) and free the index."""
        apply_stores(self._words, self.clear_steps(index))

    # -- inspection (the writer's own state, no page reads)

    @property
    def count(self) -> int:
        """Number of linked parts."""
        return len(self._order)

    @property
    def retired(self) -> frozenset[int]:
        """Indexes removed but not yet cleared."""
        return frozenset(self._retired)

    @property
    def free_count(self) -> int:
        """Indexes available to ``insert`` right now."""
        return len(self._free)

    def parts(self) -> Iterator[tuple[int, Part]]:
        """Linked parts as ``(index, part)`` in position order."""
        return iter([(index, self._parts[index]) for index in self._order])

    def part(self, index: int) -> Part | None:
        """The linked part with this index, if any."""
        return self._parts.get(index)

    def release(self) -> None:
        """Drop the views over the page (needed before closing an mmap)."""
        self._words.release()
