"""The write path of the kernel file driver: dirty pages to the cache, sizes, give-backs.

Dirt is per 4 KiB page (``core.py``): the dirty maps of a file's windows are
taken into the page runs' ``DIRTY`` flag, and only those pages go to the cache: a
zero-copy page (a cache frame) is marked dirty there, a private page of the
copy path is copied back into the cache pages it came from. The cache writes
what it holds dirty within its writeback interval; ``durable`` (fsync) asks it
to write them now and flush the device.

The kernel file driver's periodic scan calls :meth:`Flusher.write_back` for
every open file, so bytes stored through a mapping reach the disk while the
file stays open, without close, flush or fsync.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import msgspec

from microkernel.ipc import Endpoint
from microkernel.memory import PhysicalMemory
from microkernel.protocol import Ok
from servers.cache.protocol import CacheMap, Extent, MarkDirty, Pages, PageSpan, Release, Writeback
from servers.fs.protocol import FsClose, FsInfo, FsSetSize, FsSetTimes, FsStatHandle, FsVolume
from servers.vfs import core
from servers.vfs.abi import PAGE_SIZE
from servers.vfs.core import CentralFile, FilePage
from servers.vfs.paging import Pager

WRITEBACK_TIMEOUT_S = 120


class Flusher:
    """Dirty pages, sizes and memory pressure for the kernel file driver's shell."""

    def __init__(
        self,
        endpoint: Endpoint,
        memory: PhysicalMemory,
        volumes: dict[str, FsVolume],
        *,
        cache: str,
        pager: Pager,
    ) -> None:
        self.endpoint = endpoint
        self.memory = memory
        self.volumes = volumes
        self.cache = cache
        self.pager = pager
        self._locks: dict[CentralFile, anyio.Lock] = {}

    # ---------------------------------------------------------------- writeback
    def collect(self, cfile: CentralFile) -> None:
        """Take the dirty maps of every window of the file into its pages."""
        for window in cfile.windows:
            core.mark_dirty(cfile, core.collect_window(window, self.memory))

    def _lock(self, cfile: CentralFile) -> anyio.Lock:
        lock = self._locks.get(cfile)
        if lock is None:
            lock = self._locks[cfile] = anyio.Lock(fast_acquire=True)
        return lock

    def forget(self, cfile: CentralFile) -> None:
        """The central file is retired: drop its lock."""
        self._locks.pop(cfile, None)

    async def write_back(
        self,
        cfile: CentralFile,
        *,
        durable: bool = False,
        then_drop: Callable[[CentralFile], list[core.Span]] | None = None,
        publish: bool = True,
    ) -> int:
        """Hand the dirty pages to the cache: zero-copy pages are marked, private copies copied.

        One writeback of a file at a time: a private page is read while its copy
        awaits the cache, so pages are dropped (``then_drop`` chooses which; the
        pins given back are returned) only under the same lock, after it.
        ``publish=False``: the caller publishes the size (a last close folds it
        into ``FsClose``, :meth:`close_request`).
        """
        async with self._lock(cfile):
            # A last close (no publish here) writes a growth's pages at once: it must meet
            # their write error, and the file system then need not write them again.
            grows = not publish and cfile.size > cfile.info.size
            on_device, released = await self._write_back(cfile, durable, write=grows,
                                                         then_drop=then_drop)
            cfile.data_written = on_device and grows
            if publish:  # the pins went back first: the file system needs frames
                await self.publish(cfile, data_written=on_device)
            return released

    async def close_request(self, cfile: CentralFile) -> FsClose:
        """The ``FsClose`` of a last close, after its writeback: a grown size rides in it.

        Growing, the file system publishes the size (data pages before the entry,
        the modification time stamped) and closes in one message; ``cfile.info``
        takes the size the close publishes. A shrink publishes first, as always
        (the entry before the clusters go back), and the close carries no size.
        """
        disk, size = cfile.info.size, cfile.size
        if size <= disk:
            async with self._lock(cfile):
                await self.publish(cfile)
            return FsClose(cfile.fs_handle)
        cfile.published = size
        cfile.info = msgspec.structs.replace(cfile.info, size=size)
        cfile.modified = False  # the publish stamps the modification time
        return FsClose(cfile.fs_handle, size, disk, size, cfile.data_written)

    async def _write_back(
        self,
        cfile: CentralFile,
        durable: bool,
        *,
        write: bool = False,
        then_drop: Callable[[CentralFile], list[core.Span]] | None = None,
    ) -> tuple[bool, int]:
        """Hand the dirty pages over; with ``durable`` or ``write`` also onto the device.

        Returns whether every page handed over is on the device (``write``, and no
        private page copied back: those pages may hold bytes of an earlier handover),
        and how many pins ``then_drop``'s pages gave back: once the private copies are
        done, their pins go back with the ``MarkDirty`` (one message) or a ``Release``.
        """
        self.collect(cfile)
        marked, private = core.writeback_plan(cfile)
        volume = self.volumes[cfile.fs]
        written: list[int] = []
        for fp in private:
            written.extend(await self._copy_back(volume, fp))
        pins = self._take_spans(cfile, then_drop(cfile)) if then_drop else []
        now = durable or write
        if marked:  # marked and, for an fsync or a close's growth, written in one message
            await self.endpoint.call(
                self.cache, MarkDirty(volume.device, marked, write=now, release=pins), Ok,
                timeout=WRITEBACK_TIMEOUT_S if now else 30.0,
            )
        elif pins:
            self.endpoint.send_nowait(self.cache, Release(volume.device, [], pins))
        if now and written:
            await self.endpoint.call(
                self.cache, Writeback(volume.device, written), Ok, timeout=WRITEBACK_TIMEOUT_S
            )
        return (write or durable) and not private, sum(span.count for span in pins)

    async def _copy_back(self, volume: FsVolume, fp: FilePage) -> list[int]:
        ss, device = volume.logical_sector_size, volume.device
        extents = [Extent(lba, PAGE_SIZE // ss) for lba in sorted({s[0] for s in fp.sources})]
        if not extents:
            return []
        reply: Pages = await self.endpoint.call(self.cache, CacheMap(device, extents), Pages)
        frames = {p.lba: p.phys for p in reply.pages}
        for plba, inpage, dst, n in fp.sources:
            self.memory.copy(
                self.memory.view(frames[plba] + inpage, n),
                self.memory.view(fp.phys + dst, n),
                reason="copy-path",
            )
        lbas = list(frames)
        await self.endpoint.call(self.cache, MarkDirty(device, lbas), Ok)
        self.endpoint.send_nowait(self.cache, Release(device, lbas))
        return lbas

    def drop_pages(self, cfile: CentralFile, spans: list[core.Span]) -> int:
        """Forget cached pages (spans of them): cache pins go back, private frames are freed.
        Returns pins."""
        pins = self._take_spans(cfile, spans)
        if pins:
            self.endpoint.send_nowait(self.cache, Release(self.volumes[cfile.fs].device, [], pins))
        return sum(span.count for span in pins)

    def _take_spans(self, cfile: CentralFile, spans: list[core.Span]) -> list[PageSpan]:
        """Forget cached pages: private frames are freed; returns the cache pins to give back."""
        pins, frames = core.drop_spans(cfile, spans)
        self.memory.release(frames)
        return pins

    # -------------------------------------------------------------------- sizes
    async def set_size(
        self, cfile: CentralFile, size: int, *, reserve: bool = False, write_start: int = -1
    ) -> None:
        """Change the size processes see; ``reserve`` only allocates room for a writer.

        An extending write reserves first (clusters allocated, nothing zero
        filled, the size on disk unchanged), stores its bytes into the mapping,
        then publishes the new size naming where its bytes start
        (``write_start``): processes see the size at once, the disk when the
        data is in the cache (:meth:`publish`). Bytes between the old size and
        ``write_start`` nobody wrote: they are zero-filled on disk first.
        """
        core.check_range(size, 0)
        cfile.modified = True
        if reserve:
            if size > cfile.fat_size:
                await self._reserve(cfile, size)
            return
        if size < cfile.size:
            await self._shrink(cfile, size)
            cfile.published = size
            async with self._lock(cfile):
                await self._write_back(cfile, False)
                await self.publish(cfile)
        elif size > cfile.size:
            if size > cfile.fat_size:  # a legacy write or an extending truncate
                await self._reserve(cfile, size)
            start = size if write_start < 0 else min(write_start, size)
            if start > cfile.size:
                await self._zero_gap(cfile, start)
            cfile.published = size
        cfile.publish()

    async def _reserve(self, cfile: CentralFile, size: int) -> None:
        old_limit = cfile.fat_size
        info: FsInfo = await self.endpoint.call(
            cfile.fs, FsSetSize(cfile.fs_handle, size, allocate_only=True), FsInfo
        )
        cfile.info = info
        cfile.reserved = max(cfile.reserved, size)
        if not self.volumes[cfile.fs].aligned:
            await self.pager.extend_sources(cfile, old_limit)

    async def _zero_gap(self, cfile: CentralFile, start: int) -> None:
        """Bytes up to ``start`` nobody wrote: publish what was written, then zeros up to it."""
        async with self._lock(cfile):
            await self._write_back(cfile, False)
            await self.publish(cfile)
            info: FsInfo = await self.endpoint.call(
                cfile.fs, FsSetSize(cfile.fs_handle, start), FsInfo
            )
            cfile.info = info
            cfile.published = start

    async def publish(self, cfile: CentralFile, *, data_written: bool = False) -> None:
        """Make the size on disk the size processes see (under the file's lock).

        Growing, the file system writes the data pages of the new bytes before
        the directory entry (they are in the cache: ``_write_back`` ran), and
        nothing is zero-filled since all of them were written; ``data_written``
        (an fsync's writeback just wrote them): it orders them, writes no more.
        Every earlier handover of pages was published right after it, so the
        new bytes are exactly what that writeback handed over. Shrinking, the
        entry goes first and the clusters past it, reservation included, are freed.
        """
        disk, size = cfile.info.size, cfile.size
        if size == disk:
            return
        if size > disk:
            request = FsSetSize(cfile.fs_handle, size, write_start=disk, write_end=size,
                                data_written=data_written)
        else:
            request = FsSetSize(cfile.fs_handle, size)
            cfile.reserved = 0
            last = cfile.pages.get((size - 1) // PAGE_SIZE if size else -1)
            if last is not None:  # the clusters past the end are freed: copy nothing there
                last.sources = core.sources_below(last.sources, size - (size - 1) // PAGE_SIZE * PAGE_SIZE)
        cfile.published = size  # a publish in the meantime may grow it (never shrink it)
        info: FsInfo = await self.endpoint.call(cfile.fs, request, FsInfo)
        cfile.info = info
        cfile.modified = False  # the file system stamped the modification time with the size
        cfile.handed = {p for p in cfile.handed if (p + 1) * PAGE_SIZE > size}

    async def _shrink(self, cfile: CentralFile, size: int) -> None:
        """Unmap every part reaching past the new end before the clusters go back to the FAT.

        When the clusters left end inside the last page (clusters smaller than a
        page), that page goes as well, its bytes handed to the cache first: the
        rest of its 4 KiB are freed clusters (``core.whole_pages``).
        """
        keep = core.whole_pages(size, self.volumes[cfile.fs].cluster_size)
        await self.pager.cancel_fetches(cfile, keep)
        unmapped: list[anyio.Event] = []
        for window in list(cfile.windows):
            unmapped.extend(
                self.pager.remove_parts(window, core.parts_reaching(window, keep * PAGE_SIZE))
            )
        for event in unmapped:
            await event.wait()
        async with self._lock(cfile):
            self.collect(cfile)  # stores made during the grace: written if they stay in the file
            self.drop_pages(cfile, core.pages_from(cfile, size))
            cfile.handed = {p for p in cfile.handed if p < core.pages_of(size)}
            last = (size - 1) // PAGE_SIZE if size else -1
            fp = cfile.pages.get(last)
            if fp is not None:  # the tail of the last page is past the end now
                tail = size - last * PAGE_SIZE
                self.memory.view(fp.phys + tail, PAGE_SIZE - tail)[:] = bytes(PAGE_SIZE - tail)
            if keep < core.pages_of(size):  # the last page goes too: its bytes to the cache first
                await self._write_back(cfile, False)
                self.drop_pages(cfile, core.pages_from(cfile, keep * PAGE_SIZE))

    async def stamp_mtime(self, cfile: CentralFile) -> None:
        """A file written since its last stamp gets the current time (at fsync and last close)."""
        if cfile.modified:
            await self.endpoint.call(cfile.fs, FsSetTimes(cfile.fs_handle, time.time()), Ok)

    async def set_times(self, cfile: CentralFile, mtime: float) -> FsInfo:
        await self.write_back(cfile)
        await self.endpoint.call(cfile.fs, FsSetTimes(cfile.fs_handle, mtime), Ok)
        cfile.modified = False  # an explicit time wins over the automatic one at close
        info: FsInfo = await self.endpoint.call(cfile.fs, FsStatHandle(cfile.fs_handle), FsInfo)
        cfile.info = info
        cfile.publish()
        return msgspec.structs.replace(info, size=cfile.size)

    # ------------------------------------------------------------ memory pressure
    async def give_back(self, files: list[CentralFile], wanted: int) -> int:
        """Unmap every part (waiting for the unmaps, all at once), then drop idle pages."""
        unmapped: list[anyio.Event] = []
        for cfile in files:
            for window in list(cfile.windows):
                unmapped.extend(self.pager.evict_parts(window, len(window.parts)))
        for event in unmapped:
            await event.wait()
        released = 0
        for cfile in files:
            if released >= wanted:
                break
            released += await self.write_back(cfile, then_drop=core.idle_spans)
        return released
