"""SectorIO over the disc cache: the file system's metadata travels through cache pages.

A read maps the covering cache pages (``CacheMap``), copies the bytes out of the
frames and releases the pins; a write maps the pages with ``zero_fill`` (pages
the write covers wholly are never read from the disk, since they are about to
be overwritten), copies the new bytes in, marks the pages dirty and releases
them. The cache writes them back as whole pages. These copies are metadata
(FAT sectors, directory entries), not file data, so they are not counted in
``bytes_copied``.

Every cache page follows one layout rule (see ``servers.cache.geometry``):
byte ``k`` of the frame holds sector ``page_lba + k // sector_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

from microkernel.ipc import Endpoint
from microkernel.memory import PAGE_SIZE, PhysicalMemory
from microkernel.protocol import Ok
from servers.cache.protocol import (
    CacheMap,
    Extent,
    FlushDevice,
    Invalidate,
    MarkDirty,
    PageRef,
    Pages,
    Release,
    Writeback,
)

CHUNK_BYTES = 1 << 20  # at most 256 cache pages pinned per request


class CacheSectorIO:
    """Logical-sector access to one volume (LBA 0 = its boot sector) through the cache."""

    def __init__(
        self,
        endpoint: Endpoint,
        memory: PhysicalMemory,
        *,
        device: str,
        sector_size: int,
        partition_start: int,
        total_sectors: int,
        cache: str = "cache",
        alignment_offset: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.memory = memory
        self.device = device
        self.cache = cache
        self.sector_size = sector_size
        self.partition_start = partition_start
        self.partition_offset = partition_start * sector_size
        self.total_sectors = total_sectors
        self._chunk_sectors = CHUNK_BYTES // sector_size
        self._unordered: set[int] = set()  # pages dirtied since the last barrier
        self._alignment = alignment_offset  # device sectors before the first page boundary
        self._per_page = max(1, PAGE_SIZE // sector_size)
        self.barriers = 0

    async def _map(self, lba: int, count: int, *, zero_fill: bool) -> list[PageRef]:
        if lba < 0 or count < 0 or lba + count > self.total_sectors:
            raise OSError(22, f"sectors {lba}+{count} outside a {self.total_sectors}-sector volume")
        reply: Pages = await self.endpoint.call(
            self.cache,
            CacheMap(self.device, [Extent(self.partition_start + lba, count)], zero_fill),
            Pages,
        )
        return sorted(reply.pages, key=lambda p: p.lba)

    def _pieces(self, pages: list[PageRef], lba: int, count: int) -> list[tuple[int, memoryview]]:
        """(byte offset into the request, frame view) for each page's overlap with the request."""
        ss = self.sector_size
        start = (self.partition_start + lba) * ss
        end = start + count * ss
        out = []
        for page in pages:
            p0 = page.lba * ss
            lo, hi = max(start, p0), min(end, p0 + PAGE_SIZE)
            if lo < hi:
                out.append((lo - start, self.memory.view(page.phys + (lo - p0), hi - lo)))
        return out

    async def _release(self, pages: list[PageRef]) -> None:
        await self.endpoint.send(self.cache, Release(self.device, [p.lba for p in pages]))

    async def read(self, lba: int, count: int) -> bytes:
        step = self._chunk_sectors
        if count > step:  # bounded pins: a request never needs more than a chunk of cache
            parts = [await self.read(lba + i, min(step, count - i)) for i in range(0, count, step)]
            return b"".join(parts)
        pages = await self._map(lba, count, zero_fill=False)
        try:
            out = bytearray(count * self.sector_size)
            for offset, view in self._pieces(pages, lba, count):
                out[offset : offset + len(view)] = view
            return bytes(out)
        finally:
            await self._release(pages)

    async def write(self, lba: int, data: bytes) -> None:
        if len(data) % self.sector_size:
            raise OSError(
                22, f"write of {len(data)} bytes is not whole {self.sector_size}-byte sectors"
            )
        count = len(data) // self.sector_size
        step = self._chunk_sectors
        if count > step:  # e.g. zero filling a large extension: pin one chunk at a time
            view = memoryview(data)
            for i in range(0, count, step):
                n = min(step, count - i)
                await self.write(lba + i, bytes(view[i * self.sector_size : (i + n) * self.sector_size]))
            return
        pages = await self._map(lba, count, zero_fill=True)
        try:
            src = memoryview(data)
            for offset, view in self._pieces(pages, lba, count):
                view[:] = src[offset : offset + len(view)]
            await self.endpoint.call(self.cache, MarkDirty(self.device, [p.lba for p in pages]), Ok)
            self._unordered.update(p.lba for p in pages)
        finally:
            await self._release(pages)

    async def flush(self) -> None:
        await self.endpoint.call(self.cache, FlushDevice(self.device), Ok, timeout=120)
        self._unordered.clear()

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        """Make every page written since the last barrier durable before anything written next.

        Without it the cache writes dirty pages back in any order. ``data`` adds
        (volume lba, count) runs of file data to write first as well. Nothing to
        do when nothing was written since the last barrier (or flush).
        """
        extra: set[int] = set()
        for lba, count in data:
            start = self.partition_start + lba
            extra.update(range(self._page_of(start), start + count, self._per_page))
        if not self._unordered and not extra:
            return
        pages = sorted(self._unordered | extra)
        await self.endpoint.call(self.cache, Writeback(self.device, pages, flush=True), Ok,
                                 timeout=120)
        self._unordered.difference_update(pages)
        self.barriers += 1

    def _page_of(self, device_lba: int) -> int:
        """First device sector of the cache page holding ``device_lba``."""
        return device_lba - (device_lba - self._alignment) % self._per_page

    async def discard(self, lba: int, count: int) -> None:
        """Invalidate the cache pages lying wholly inside freed sectors (never written back).

        A page shared with sectors still in use (clusters smaller than a page)
        is kept: its other bytes may be dirty and wanted.
        """
        start = self.partition_start + lba
        first = self._page_of(start)
        if first < start:
            first += self._per_page
        pages = list(range(first, start + count - self._per_page + 1, self._per_page))
        if pages:
            await self.endpoint.call(self.cache, Invalidate(self.device, pages), Ok)
