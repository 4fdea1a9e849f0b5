"""SectorIO over the disc cache: the file system's metadata travels through cache pages.

A read maps the covering cache pages (``CacheMap``), copies the bytes out of the
frames and releases the pins; a write maps the pages with ``zero_fill`` (pages
the write covers wholly are never read from the disk, since they are about to
be overwritten), copies the new bytes in, marks the pages dirty and releases
them. The cache writes them back as whole pages. These copies are metadata
(FAT sectors, directory entries), not file data, so they are not counted in
``bytes_copied``.

Order (docs/fat.md). *Eager* (the default): ``barrier()`` writes back the
pages dirtied since the last barrier and flushes the device, there and then.
*Lazy* (``lazy=True``, for volumes where no cache page holds both metadata and
file data): a changed page stays pinned and is NOT marked dirty; a barrier only
records that the operation's later changes follow its earlier ones
(:class:`servers.fat.writeorder.WriteOrder`). The pages go out group by group
(``MarkDirty`` + ``Writeback(flush=True)`` per group) at ``flush``, when more
than ``max_pending`` pages wait, when a change would close a cycle, and from
the server's background writer. A page kept pinned also needs no ``CacheMap``
for its next change.

Every cache page follows one layout rule (see ``servers.cache.geometry``):
byte ``k`` of the frame holds sector ``page_lba + k // sector_size``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import anyio

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
from servers.fat.writeorder import WriteOrder

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
        lazy: bool = False,
        max_pending: int = 256,
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
        self.barriers = 0  # device flushes issued to order metadata (groups written)
        self.lazy = lazy
        self.max_pending = max_pending
        self.forced = 0  # lazy: write-outs a cycle forced before a change
        self.write_failure: str | None = None
        self._order = WriteOrder()
        self._frames: dict[int, int] = {}  # page held (pinned, pending) -> its frame
        self._since: set[int] = set()  # lazy: pages this operation changed since its barrier
        self._follow: set[int] = set()  # lazy: pages this operation's next changes follow
        # A write-out and a change never interleave. No checkpoint when the lock is free:
        # cheaper, and a legal task order the code must be right under (docs/sim.md).
        self._lock = anyio.Lock(fast_acquire=True)
        self._sealed = False  # unmount queued its last writes (seal)
        self._copies: list[tuple[int, int]] = []  # device lba, count of each FAT copy
        self._data_start = 0  # first device page that file data may share (set_layout)
        # Lazy: the data pages of the next barriers are on the device already (the
        # kernel file driver wrote them and met any error): ordered, not written again.
        self.data_written = False

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
        if self._sealed:
            raise OSError(5, "the volume is unmounted: its last writes are queued")
        if self.lazy:
            async with self._lock:
                await self._write_held(lba, data)
            if len(self._order) > self.max_pending:
                await self.write_out()
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

    async def _write_held(self, lba: int, data: bytes) -> None:
        """Lazy: change held pages in place, one page at a time; record what each follows.

        Page by page, because two pages of one write may each have to follow the
        other's earlier content (a chain cut across a page boundary): the second
        page's old content then goes out before its new bytes go in.
        """
        ss = self.sector_size
        start = self.partition_start + lba
        end = start + len(data) // ss
        src = memoryview(data)
        page = self._page_of(start)
        while page < end:
            lo, hi = max(page, start), min(page + self._per_page, end)
            await self._change_page(page, lo - self.partition_start,
                                    src[(lo - start) * ss:(hi - start) * ss])
            page += self._per_page

    def set_layout(self, copies: Sequence[tuple[int, int]], data_start: int) -> None:
        """The (volume lba, count) of each FAT copy, and where file data may start.

        A FAT page's change follows earlier FAT changes of its own copy only (each
        copy is a whole FAT; copies that differ after a cut are repaired, one copy
        never needs another first). Pages from ``data_start`` on may have been
        dirtied by the kernel file driver (a cluster's former file).
        """
        self._copies = [(self.partition_start + lba, count) for lba, count in copies]
        self._data_start = self._page_of(self.partition_start + data_start)

    def _copies_of(self, page: int) -> set[int]:
        end = page + self._per_page
        return {n for n, (start, count) in enumerate(self._copies)
                if start < end and page < start + count}

    def _follow_for(self, page: int) -> list[int]:
        follow = [p for p in self._follow if p in self._order]
        if not self._copies or not self._fat_only(page):  # a shared page follows everything
            return follow
        mine = self._copies_of(page)
        return [q for q in follow if not self._fat_only(q) or self._copies_of(q) & mine]

    def _fat_only(self, page: int) -> bool:
        """Does the page hold nothing but FAT sectors (no boot, root directory, data)?"""
        first, last = min(s for s, _ in self._copies), max(s + n for s, n in self._copies)
        return first <= page and page + self._per_page <= last

    async def _change_page(self, page: int, lba: int, data: memoryview) -> None:
        self._check_writing()
        follow = self._follow_for(page)
        first = self._order.needs_first(page, follow)
        if first:  # a cycle: those pages go out now, before this change touches the page
            self.forced += 1
            await self._write_groups(first)
            follow = [p for p in follow if p in self._order]
        count = len(data) // self.sector_size
        if page not in self._frames:
            refs = await self._map(lba, count, zero_fill=True)
            self._frames[page] = refs[0].phys
            if len(refs) > 1:  # pragma: no cover - one page asked for, one page given
                await self._release(refs[1:])
            if page >= self._data_start:
                # A data-region page (a directory cluster, a zero fill) may still be dirty
                # from a file that held the cluster before: written now, it holds no stale
                # dirt the cache could write behind this change's order.
                await self.endpoint.call(self.cache, Writeback(self.device, [page]), Ok,
                                         timeout=120)
        for offset, view in self._pieces([PageRef(page, self._frames[page])], lba, count):
            view[:] = data[offset : offset + len(view)]
        self._order.change(page, follow)
        self._since.add(page)

    def seal(self) -> None:
        """Unmount queued its last writes (the clean flag): later writes are refused."""
        self._sealed = True

    def begin(self, carry: bool = False) -> None:
        """A new operation: what it writes follows nothing written before (lazy).

        With ``carry`` (the last operation stopped part-way) it follows whatever that
        one wrote or was to follow, so its leftovers in memory keep their order.
        """
        if carry:
            self._follow |= self._since
        else:
            self._follow.clear()
        self._since.clear()

    def order_after(self, lba: int, count: int) -> None:
        """The operation's next changes follow whatever is pending in these sectors (lazy)."""
        if not self.lazy or not len(self._order):
            return
        start = self.partition_start + lba
        first = self._page_of(start)
        self._follow.update(p for p in self._order.pending() if first <= p < start + count)

    async def write_out(self, pages: Iterable[int] | None = None) -> None:
        """Lazy: write the pending groups (all, or those ``pages`` need), flushing after each."""
        if not self.lazy or not len(self._order):
            return
        async with self._lock:
            await self._write_groups(None if pages is None else set(pages))

    def _check_writing(self) -> None:
        """Refuse any change or write-out once a group's write-out failed (lazy).

        The failed group's pages were handed to the cache as dirty (``MarkDirty``)
        and stay in ``_frames``: the cache writes them back on its own, which is
        safe only for the bytes they held then (their prerequisites are durable).
        A later change to such a page (an operation already running when the
        write-out failed) would land in a dirty cache page and reach the disk
        without the pages it must follow (docs/sim.md, seed 319). Nothing written
        after a failed group could be ordered after it anyway, so nothing is.
        """
        if self.write_failure is not None:
            raise OSError(5, f"metadata writes stopped after a failure ({self.write_failure})")

    async def _write_groups(self, pages: set[int] | None) -> None:
        self._check_writing()
        for group in self._order.plan(pages):
            ours = [p for p in group if not self._order.is_foreign(p)]
            try:
                if ours:
                    await self._idempotent(MarkDirty(self.device, ours), 30)
                await self._idempotent(Writeback(self.device, group, flush=True), 120)
            except OSError as exc:
                self.write_failure = exc.strerror or str(exc)
                raise
            self.barriers += 1
            self._order.written(group)
            if ours:
                await self.endpoint.send(self.cache, Release(self.device, ours))
                for page in ours:
                    del self._frames[page]

    async def _idempotent(self, msg: MarkDirty | Writeback, timeout: float) -> None:
        """Call the cache, asking again when the reply is lost (both requests are idempotent)."""
        for attempt in range(3):
            try:
                await self.endpoint.call(self.cache, msg, Ok, timeout=timeout)
                return
            except TimeoutError:
                if attempt == 2:
                    raise

    @property
    def pending_writes(self) -> int:
        """Pages waiting to be written (lazy)."""
        return len(self._order)

    async def flush(self) -> None:
        await self.write_out()
        await self.endpoint.call(self.cache, FlushDevice(self.device), Ok, timeout=120)
        self._unordered.clear()

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        """Make every page written since the last barrier durable before anything written next.

        Without it the cache writes dirty pages back in any order. ``data`` adds
        (volume lba, count) runs of file data to write first as well. Nothing to
        do when nothing was written since the last barrier (or flush). Lazy: only
        recorded (the data pages are written, not flushed, so a write error reaches
        the caller now); the operation's later changes follow these pages.
        """
        extra: set[int] = set()
        for lba, count in data:
            start = self.partition_start + lba
            extra.update(range(self._page_of(start), start + count, self._per_page))
        if self.lazy:
            if extra and not self.data_written:  # the data goes to the device now (no flush):
                # its error is the writer's
                await self.endpoint.call(self.cache, Writeback(self.device, sorted(extra)), Ok,
                                         timeout=120)
            for page in extra:
                self._order.foreign(page)  # no-op for a page of ours already pending
            self._follow |= self._since | extra
            self._since = set()
            return
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
        pages = [p for p in range(first, start + count - self._per_page + 1, self._per_page)
                 if p not in self._frames]  # a held page is written with its group instead
        if pages and self.lazy:  # nothing can reuse the clusters before the free is durable,
            await self.endpoint.send(self.cache, Invalidate(self.device, pages))  # so no wait
        elif pages:
            await self.endpoint.call(self.cache, Invalidate(self.device, pages), Ok)
