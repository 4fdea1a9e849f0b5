"""What an open learns from the file system that spares the read path a round trip.

A file system answers the open of a small file with the file's extents
(``FsOpened.extents``: what ``MapRange`` of its whole pages would answer at
that moment). The kernel file driver fetches such a file whole at its open,
so with them the fetch asks the cache at once: ``CacheRead`` straight from the
kernel file driver, no ``MapRange`` (docs/architecture.md §4).

They are true only until the file's clusters change, so they are used only by
the fetch the open itself starts, before it awaits anything: a central file
this very open created (nobody else could have changed its size yet), started
synchronously, so the fetch is registered with the file (and cancelled by a
shrink like any fetch) before any other message is handled. Pure functions.
"""

from __future__ import annotations

from servers.fs.protocol import FileExtent
from servers.vfs.abi import PAGE_SIZE


def extents_for(
    known: list[FileExtent], first_page: int, count: int, size: int, sector_size: int
) -> list[FileExtent] | None:
    """The extents of file pages ``first_page`` .. ``first_page + count - 1``, cut from ``known``.

    ``known`` is what ``MapRange`` answered, at the open, for the whole pages of
    a file of ``size`` bytes (clipped to its clusters, as ``MapRange`` clips);
    pages past them are not known (None: ask the file system). The cut is what
    ``MapRange`` would answer for those pages: the same sectors, clipped to the
    range; None when it names none.
    """
    start, end = first_page * PAGE_SIZE, (first_page + count) * PAGE_SIZE
    if not known or count <= 0 or end > -(-size // PAGE_SIZE) * PAGE_SIZE:
        return None
    out: list[FileExtent] = []
    for e in known:
        lo, hi = max(start, e.file_offset), min(end, e.file_offset + e.count * sector_size)
        if lo < hi:
            skip = (lo - e.file_offset) // sector_size
            out.append(FileExtent(lo, e.lba + skip, -(-(hi - lo) // sector_size)))
    return out or None
