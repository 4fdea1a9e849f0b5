"""Read-ahead across a directory: which entries' bytes to bring into the cache next.

A program that reads the files of a directory (a copy out, an archiver, a
build, a loop over sorted names) opens them one after another, and each open
of a small file would cost a device read of its own. Once a second file of a
directory is opened, the FAT server reads the directory's small files into
the cache ahead of the opens, a batch at a time (``CachePrefetch``): files
written one after another lie one after another on the disk, so a batch is
one driver command for many files, and the later opens find their pages
present.

The reader's order need not be the directory's: names sorted by the program
are in no particular entry order. So the batches *sweep* the directory in
entry order, from the entry of that second open to the end and on from the
first entry back to it (one pass, never more), and the next batch goes out
when an open asks for an entry the sweep has not reached yet (the reader is
not following) or reaches the middle of the last batch (a reader going
forward stays behind the disk). Batches double from ``BATCH_FIRST`` to
``BATCH_MAX`` entries.

Pure (no I/O, h11 style): the volume says which entry of which directory was
opened and how many pages an entry would want; this answers which entries to
read ahead. Everything is bounded: entries looked at and pages per batch,
one pass at a time per directory (a new one only after as many opens again as
the last pass read ahead), directories followed. A wrong guess costs clean cache
pages, reclaimed like any other.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from servers.fat.dirent import DirSlot

BATCH_FIRST: Final = 8  # entries in a directory's first batch
BATCH_MAX: Final = 64  # entries in a batch at most (doubling from the first)
SCAN_MAX: Final = 256  # entries looked at per batch (skipped ones count: directories, big files)
DIRS_MAX: Final = 64  # directories followed at once (the least recently opened one is forgotten)


@dataclass(slots=True)
class _Sweep:
    """The opens of one directory and the pass of read-ahead over its entries."""

    last: int  # entry index of the last open
    origin: int = -1  # entry index the pass started at (-1: no pass yet)
    until: int = -1  # the pass has looked at entries origin.. up to (not including) this
    wrapped: bool = False  # the pass went past the last entry and goes on from the first
    done: bool = False  # the pass is back at its origin: every entry was looked at
    trigger: int = -1  # an open going forward to this entry index or past sends the next batch
    batch: int = BATCH_FIRST
    chosen: int = 0  # entries the pass read ahead
    since_done: int = 0  # opens since the pass ended: as many again as it chose is a new pass

    def reached(self, index: int) -> bool:
        """Whether the pass has looked at the entry at ``index``."""
        if self.done:
            return True
        if self.wrapped:
            return index >= self.origin or index < self.until
        return self.origin <= index < self.until


def _index(slot: DirSlot) -> int:
    return slot.index


class DirReadAhead:
    """Per directory: is it being read through, and which entries come next."""

    def __init__(self) -> None:
        self._sweeps: OrderedDict[int, _Sweep] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sweeps)

    def opened(
        self,
        directory: int,
        slots: Sequence[DirSlot],
        index: int,
        pages: Callable[[DirSlot], int],
        max_pages: int,
    ) -> list[DirSlot]:
        """The entry at ``index`` of ``directory`` (its live ``slots``, in index order) was
        opened: the entries to read ahead now, in the order of the pass.

        ``pages(slot)`` is how many cache pages reading that entry takes (0: not
        worth it, such as a directory, an empty or a big file); a batch takes at
        most ``max_pages``. Nothing for the first open of a directory (one file
        is no pattern) nor for the same entry again.
        """
        sweep = self._sweeps.get(directory)
        if sweep is None:
            self._sweeps[directory] = _Sweep(index)
            while len(self._sweeps) > DIRS_MAX:
                self._sweeps.popitem(last=False)
            return []
        self._sweeps.move_to_end(directory)
        if sweep.done:  # a reader going through the directory again gets a pass of its own
            sweep.since_done += 1
            if sweep.since_done > sweep.chosen:
                sweep = self._sweeps[directory] = _Sweep(sweep.last)
        previous, sweep.last = sweep.last, index
        forward = index > previous
        if sweep.origin < 0:
            if index == previous:
                return []
            sweep.origin = sweep.until = index
        elif sweep.done or (sweep.reached(index) and not (forward and index >= sweep.trigger)):
            return []
        return self._batch(sweep, slots, pages, max_pages)

    def _batch(
        self,
        sweep: _Sweep,
        slots: Sequence[DirSlot],
        pages: Callable[[DirSlot], int],
        max_pages: int,
    ) -> list[DirSlot]:
        """The next entries of the pass: up to ``sweep.batch`` worth reading, ``max_pages`` pages."""
        chosen: list[DirSlot] = []
        budget, scanned = max_pages, 0
        k = bisect.bisect_left(slots, sweep.until, key=_index)
        while len(chosen) < sweep.batch and scanned < SCAN_MAX and not sweep.done:
            if k == len(slots):  # past the last entry: on from the first, once
                if sweep.wrapped:
                    sweep.done = True
                    break
                sweep.wrapped, sweep.until, k = True, 0, 0
                continue
            slot = slots[k]
            if sweep.wrapped and slot.index >= sweep.origin:
                sweep.done = True
                break
            want = pages(slot)
            if want > budget and chosen:  # the batch is full: this entry starts the next one
                break
            if 0 < want <= budget:
                chosen.append(slot)
                budget -= want
            sweep.until = slot.index + 1
            k += 1
            scanned += 1
        sweep.trigger = chosen[len(chosen) // 2].index if chosen else sweep.until
        sweep.batch = min(2 * sweep.batch, BATCH_MAX)
        sweep.chosen += len(chosen)
        return chosen

    def forget(self, directory: int) -> None:
        """The directory is gone or was rewritten: start over."""
        self._sweeps.pop(directory, None)
