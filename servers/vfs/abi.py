"""The window layout: what the file library and the kernel file driver agree on.

Each open handle is a window, a reserved range of the process's linear address
space (see ``docs/architecture.md``)::

    offset      pages  mapped             what
    ----------  -----  -----------------  ------------------------------------------
    0x0000          1  read-only          FileMap (``filemap.py``)
    0x1000          1  read-only          file state page, shared by every opener
    0x2000          1  read-write         per-process file page (positions, counters)
    0x3000        128  read-write, lazily dirty map: one byte per data page
    0x83000       ...  as the handle      data: file byte p lives at DATA_OFFSET + p

The dirty map has one byte per 4 KiB page of file data: the library sets the
byte of every page it stores into (in the same step as the store, no await in
between), and the kernel file driver takes (reads and clears) the bytes of the
pages it writes back. Its pages are backed by frames only where the window has
data mapped: a dirty-map page covers ``PAGES_PER_MAP_PAGE`` data pages (16 MiB).

This module is the whole ABI: the library imports it, never the server.
"""

from __future__ import annotations

from typing import Final

from microkernel.addrspace import AddressSpace

PAGE_SIZE: Final = 4096
FILEMAP_OFFSET: Final = 0
STATE_OFFSET: Final = PAGE_SIZE
PROCPAGE_OFFSET: Final = 2 * PAGE_SIZE
DIRTY_OFFSET: Final = 3 * PAGE_SIZE
WINDOW_DATA: Final = 1 << 31  # part bases are int32: a window maps up to 2 GiB of a file
DATA_PAGES: Final = WINDOW_DATA // PAGE_SIZE
DIRTY_MAP_PAGES: Final = DATA_PAGES // PAGE_SIZE  # one byte per data page
PAGES_PER_MAP_PAGE: Final = PAGE_SIZE
DATA_OFFSET: Final = DIRTY_OFFSET + DIRTY_MAP_PAGES * PAGE_SIZE
WINDOW_SIZE: Final = DATA_OFFSET + WINDOW_DATA
DIRTY: Final = 1


def map_pages_for(first: int, count: int) -> range:
    """The dirty-map pages that hold the bytes of data pages ``first .. first+count-1``."""
    if count <= 0:
        return range(0)
    return range(first // PAGES_PER_MAP_PAGE, (first + count - 1) // PAGES_PER_MAP_PAGE + 1)


def mark_dirty(space: AddressSpace, offset: int, length: int) -> None:
    """Library side: the process stored into file bytes ``offset .. offset+length``.

    Marks one byte per touched page, split at dirty-map page boundaries (each
    dirty-map page may be a different frame).
    """
    if length <= 0:
        return
    first = offset // PAGE_SIZE
    end = (offset + length - 1) // PAGE_SIZE + 1
    while first < end:
        stop = min(end, (first // PAGES_PER_MAP_PAGE + 1) * PAGES_PER_MAP_PAGE)
        view = space.raw_view(DIRTY_OFFSET + first, stop - first, writable=True)
        view[:] = b"\x01" * (stop - first)
        view.release()
        first = stop
