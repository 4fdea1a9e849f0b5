"""The disc cache protocol (kernel file driver, file systems <-> disc cache manager).

Cache pages are 4 KiB frames aligned to the device's *physical* sectors: page
``n`` of a device starts at logical sector ``alignment_offset + n * spp`` where
``spp = 4096 // logical_sector_size``. A page is named by that first logical
sector (``page_lba``). Requests name logical sector extents; the cache covers
them with pages.

Flow of a read miss (docs/architecture.md §4): the file system sends ``CacheRead`` with
``notify`` set to the kernel file driver; when every page is present the cache
sends ``SectorsReady`` (or ``CacheFailed``) **to the notify port**, not back to
the file system. Each page listed in ``SectorsReady`` or ``Pages`` carries one
pin for the receiver, dropped with ``Release``; a pinned page is never evicted.
``SectorsReady`` names pages as runs (``PageRun``); ``Release``, ``MarkDirty``,
``Invalidate`` and ``Writeback`` take single pages, runs (``PageSpan``), or both.
``CachePrefetch`` reads pages ahead for nobody in particular: they arrive unpinned.
"""

from __future__ import annotations

import msgspec


class Extent(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """``count`` logical sectors starting at ``lba`` (device-absolute)."""

    lba: int
    count: int


class PageRef(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A cache page: its first logical sector and the physical frame holding it."""

    lba: int
    phys: int


class PageRun(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """``count`` consecutive cache pages from page ``lba`` in consecutive frames from ``phys``.

    Page ``k`` of the run starts at logical sector ``lba + k * spp`` and lives in
    frame ``phys + k * 4096``: one record, one mapping and one driver command per run.
    """

    lba: int
    count: int
    phys: int

    def refs(self, spp: int) -> list[PageRef]:
        """The run's pages one by one."""
        return [PageRef(self.lba + k * spp, self.phys + k * 4096) for k in range(self.count)]


class PageSpan(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """``count`` consecutive cache pages from the page holding sector ``lba``."""

    lba: int
    count: int


# ------------------------------------------------------------------ requests
class CacheRead(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Bring the pages covering ``extents`` in; answer ``notify`` with ``SectorsReady(tag)``.

    ``zero_fill``: the extents are newly allocated space, so pages lying wholly
    inside them are zero-filled frames, never read from the disk. Those pages
    are handed out clean (zeros that write nothing unless the holder marks them
    dirty): a writer may map reserved room it never fills.
    """

    device: str
    extents: list[Extent]
    notify: str
    tag: int
    zero_fill: bool = False


class CacheMap(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Same as ``CacheRead`` but answered to the caller with ``Pages`` (metadata access);
    zero-filled pages are dirty (the zeros are written)."""

    device: str
    extents: list[Extent]
    zero_fill: bool = False


class Release(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Drop one pin on each page (the frames are no longer mapped or used by the sender)."""

    device: str
    pages: list[int]
    runs: list[PageSpan] = msgspec.field(default_factory=list)  # and these page runs


class MarkDirty(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The sender changed these pages' bytes in place; they must be written back.

    ``write``: write them now, as ``Writeback`` of the same pages would (no flush):
    the reply comes once they are on the device, so the sender meets a write
    error, and one message does both. ``release``: then drop one of the sender's
    pins on each of these pages, as a ``Release`` would (a last close's marking
    and letting go in one message).
    """

    device: str
    pages: list[int]
    runs: list[PageSpan] = msgspec.field(default_factory=list)  # and these page runs
    write: bool = False
    release: list[PageSpan] = msgspec.field(default_factory=list)  # page runs


class Writeback(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Write the given dirty pages (all dirty pages of the device when both lists are empty).

    ``flush``: then flush the device, so the reply means the pages are durable.
    A file system uses this as a write barrier: what it dirties after the reply
    reaches the disk after these pages, whatever the cache writes meanwhile.
    """

    device: str
    pages: list[int] = msgspec.field(default_factory=list)
    flush: bool = False
    runs: list[PageSpan] = msgspec.field(default_factory=list)  # and these page runs


class FlushDevice(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Write every dirty page of the device, then flush the device (reply after durable)."""

    device: str


class Invalidate(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Forget these pages (freed clusters): dirty contents are discarded, not written."""

    device: str
    pages: list[int]
    runs: list[PageSpan] = msgspec.field(default_factory=list)  # and these page runs


class CachePrefetch(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Read-ahead: bring the absent pages covering ``extents`` in, pin none, answer nobody.

    A hint (a file system reading ahead of opens that go through a directory):
    at most ``PREFETCH_MAX_PAGES`` pages, only into frames that are free without
    evicting anything (the rest is left out), read with one driver command per
    run of pages that follow each other on the disk. The pages arrive clean and
    unpinned, reclaimable like any other; a later ``CacheRead`` of them is a hit
    (or joins their read while it is in flight).
    """

    device: str
    extents: list[Extent]


PREFETCH_MAX_PAGES = 256  # pages one CachePrefetch may bring in (1 MiB)


class GetCacheStats(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Ask for ``CacheStats``."""


class GiveBackDone(msgspec.Struct, frozen=True, gc=False, tag=True):
    """A page holder's answer to ``GiveBack``: how many pins it released (after ``Release``s)."""

    request: int
    released: int


# msgspec decodes a tagged union only when its members agree on array_like: the
# requests with list fields are maps, so every request is a map (and GiveBack
# is one too, as it shares the holder's inbox union with SectorsReady/CacheFailed).
CacheRequest = (
    CacheRead
    | CacheMap
    | Release
    | MarkDirty
    | Writeback
    | FlushDevice
    | Invalidate
    | GetCacheStats
    | GiveBackDone
    | CachePrefetch
)


# ------------------------------------------------------- replies and notifications
class SectorsReady(msgspec.Struct, frozen=True, gc=False, tag=True):
    """To the notify port: every page of ``tag`` is present (each pinned once for the receiver).

    The pages come as runs of consecutive pages in consecutive frames: a few
    records per MiB, not one per page.
    """

    tag: int
    device: str
    runs: list[PageRun]


class CacheFailed(msgspec.Struct, frozen=True, gc=False, tag=True):
    """To the notify port: the read for ``tag`` failed; no page of it stays pinned or poisoned."""

    tag: int
    device: str
    errno: int
    message: str


class Pages(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Reply to ``CacheMap``: the pages, each pinned once for the caller."""

    pages: list[PageRef]


class GiveBack(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Cache -> page holder under memory pressure: please release about ``pages`` pins."""

    request: int
    pages: int


class CacheStats(msgspec.Struct, frozen=True, gc=False, tag=True):
    pages_total: int
    pages_present: int
    pages_dirty: int
    pages_pinned: int
    hits: int
    misses: int
    evictions: int
    driver_commands: int
    read_bytes: int
    write_bytes: int
    pins_refused: int = 0  # pins named in a Release (or GiveBackDones) by a port not holding them


# What a page holder's inbox (the kernel file driver) receives from the cache.
CacheNotification = SectorsReady | CacheFailed | GiveBack
