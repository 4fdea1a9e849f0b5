"""The FAT file system server: a thin async shell around :class:`FatVolume`.

It mounts its volume at setup (so boot only continues once the file system is
usable), translates the file-system protocol to volume calls, and does the one
thing the volume cannot: for ``MapRange`` it sends the ``CacheRead`` that makes
the disc cache deliver the file's pages straight to the kernel file driver.
Metadata goes through the cache as well (:class:`CacheSectorIO`). Handling is
sequential: the volume's in-memory FAT and directory state have one writer.
"""

from __future__ import annotations

import anyio
import msgspec

from drivers.protocol import Geometry, Identify
from microkernel.ipc import Envelope, Router
from microkernel.memory import PAGE_SIZE, PhysicalMemory
from microkernel.server import Server, handles
from servers.cache.protocol import PREFETCH_MAX_PAGES, CachePrefetch, CacheRead, Extent
from servers.fat.cacheio import CacheSectorIO
from servers.fat.protocol import FAT_TYPE, entry_native
from servers.fat.volume import FatVolume, FileInfo
from servers.fs.protocol import (
    OPENED_EXTENTS_MAX,
    FileExtent,
    FsClose,
    FsDir,
    FsForget,
    FsFsync,
    FsInfo,
    FsLookup,
    FsMkdir,
    FsMkdirAt,
    FsOpen,
    FsOpenAt,
    FsOpened,
    FsReadDir,
    FsReadDirAt,
    FsRename,
    FsRenameAt,
    FsRequest,
    FsRmdir,
    FsRmdirAt,
    FsSetSize,
    FsSetTimes,
    FsStat,
    FsStatFs,
    FsStatHandle,
    FsUnlink,
    FsUnlinkAt,
    FsVolume,
    Mapped,
    MapRange,
)


class FatServer(Server):
    protocol = FsRequest
    concurrent = False

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        *,
        device: str,
        partition: int = 0,
        read_only: bool = False,
        cache: str = "cache",
        write_interval: float | None = 1.0,
        held_pages: int = 256,
    ) -> None:
        super().__init__(name, router)
        self.held_pages = held_pages  # metadata pages the lazy order may keep pinned
        # Seconds between background write-outs of pending metadata groups (None: only
        # at fsync, unmount and the pending bound), like the cache's writeback interval.
        self.write_interval = write_interval
        self.memory = memory
        self.device = device
        self.partition = partition
        self.read_only = read_only
        self.cache = cache
        self._volume: FatVolume | None = None
        self.geometry: Geometry | None = None

    @property
    def volume(self) -> FatVolume:
        if self._volume is None:
            raise OSError(5, f"{self.name}: no volume mounted")
        return self._volume

    async def setup(self) -> None:
        geo: Geometry = await self.endpoint.call(self.device, Identify(), Geometry)
        self.geometry = geo
        start, sectors = 0, geo.total_sectors
        if self.partition:
            parts = {p.index: p for p in geo.partitions}
            if self.partition not in parts:
                raise OSError(
                    6, f"{self.device} has no partition {self.partition} (has {sorted(parts)})"
                )
            start, sectors = parts[self.partition].start, parts[self.partition].sectors
        io = CacheSectorIO(
            self.endpoint,
            self.memory,
            device=self.device,
            sector_size=geo.logical_sector_size,
            partition_start=start,
            total_sectors=sectors,
            cache=self.cache,
            alignment_offset=geo.alignment_offset,
            max_pending=self.held_pages,
        )
        self._volume = await FatVolume.mount(io, read_only=self.read_only)
        align = geo.alignment_offset * geo.logical_sector_size
        if not self.read_only and self._volume.data_alignment_ok(PAGE_SIZE, align):
            # No cache page holds both metadata and file data (which the kernel file
            # driver dirties at will), so held metadata pages can wait for their order.
            io.lazy = True
            self._volume.fat.quarantine = True
            boot, scale = self._volume.boot, self._volume.boot.bytes_per_sector // io.sector_size
            io.set_layout([((boot.fat_start + n * boot.fat_size) * scale,
                            boot.fat_size * scale) for n in range(boot.num_fats)],
                          boot.data_start * scale)
        for problem in self._volume.problems:
            self.log.warning("volume problem", problem=problem)
        self.router.counters.volume_repairs += self._volume.repairs

    async def background(self) -> None:
        """Write pending metadata groups out every ``write_interval`` (lazy order)."""
        if self.write_interval is None:
            return
        while True:
            await anyio.sleep(max(self.write_interval, 0.005))  # 0: often, never a spin
            vol = self._volume
            if vol is None or not vol.io.pending_writes or vol.write_error is not None:
                continue
            try:
                await self._io.write_out()
            except OSError as exc:  # the next operation reports it (write_failure)
                self.log.warning("metadata write-out failed", error=str(exc))
                continue
            vol.reclaim_if_durable()

    async def teardown(self) -> None:
        if self._volume is not None:
            await self._volume.unmount()
            self._volume = None

    # ------------------------------------------------------------------ helpers
    def _info(self, fi: FileInfo) -> FsInfo:
        cs = self.volume.boot.cluster_size
        return FsInfo(
            fi.name,
            fi.attributes,
            fi.size,
            -(-fi.size // cs) * cs,
            fi.is_dir,
            fi.mtime,
            fi.ctime,
            fi.atime,
            fi.file_id,
            entry_native(fi.short_name, fi.first_cluster),
        )

    @property
    def _io(self) -> CacheSectorIO:
        io = self.volume.io
        assert isinstance(io, CacheSectorIO)
        return io

    # ----------------------------------------------------------------- handlers
    @handles(FsOpen)
    async def on_open(self, env: Envelope, msg: FsOpen) -> FsOpened:
        handle = await self.volume.open(
            msg.path, create=msg.create, exclusive=msg.exclusive, truncate=msg.truncate
        )
        if not msg.create:
            self._read_ahead(handle)
        return await self._opened(handle, msg.reserve)

    @handles(FsOpenAt)
    async def on_open_at(self, env: Envelope, msg: FsOpenAt) -> FsOpened:
        handle = await self.volume.open_at(
            msg.directory, msg.name, create=msg.create, exclusive=msg.exclusive
        )
        if not msg.create:
            self._read_ahead(handle)
        return await self._opened(handle, msg.reserve)

    async def _opened(self, handle: int, reserve: int) -> FsOpened:
        """The open's reply; an empty file without clusters first gets its reservation.

        The reservation saves the first write a round trip; failing to make it
        (a full disk, an I/O error) fails nothing: the write reserves itself and
        meets the error there.
        """
        vol = self.volume
        reserved: list[FileExtent] = []
        if reserve > 0 and vol.allocated(handle) == 0 and not vol.read_only:  # empty, no cluster
            try:
                start = self._io.partition_start
                reserved = [
                    FileExtent(e.file_offset, start + e.lba, e.count)
                    for e in await vol.set_size(handle, reserve, zero_fill=True,
                                                allocate_only=True)
                ]
            except OSError as exc:
                self.log.debug("no reservation at open", handle=handle, error=str(exc))
        info = msgspec.structs.replace(self._info(await vol.stat(handle)),
                                       alloc_size=vol.allocated(handle))
        return FsOpened(handle, info, self._opened_extents(handle), reserved)

    def _opened_extents(self, handle: int) -> list[FileExtent]:
        """A small file's extents for the open's reply: its fetch needs no ``MapRange``."""
        start = self._io.partition_start
        return [FileExtent(e.file_offset, start + e.lba, e.count)
                for e in self.volume.opened_extents(handle, OPENED_EXTENTS_MAX, PAGE_SIZE)]

    def _read_ahead(self, handle: int) -> None:
        """Opens going through a directory: the next small files into the cache, one request.

        Sent before the open's reply, so the opened file's own read joins it. A
        hint: a cache whose inbox is full (or that is gone) goes without it.
        """
        spans = self.volume.read_ahead(handle, OPENED_EXTENTS_MAX, PAGE_SIZE, PREFETCH_MAX_PAGES)
        if spans:
            start = self._io.partition_start
            extents = [Extent(start + lba, count) for lba, count in spans]
            try:
                self.endpoint.send_nowait(self.cache, CachePrefetch(self.device, extents))
            except (anyio.WouldBlock, OSError) as exc:
                self.log.debug("no read-ahead", error=str(exc) or type(exc).__name__)

    @handles(FsLookup)
    async def on_lookup(self, env: Envelope, msg: FsLookup) -> FsInfo:
        return self._info(await self.volume.lookup(msg.directory, msg.name))

    @handles(FsReadDirAt)
    async def on_readdir_at(self, env: Envelope, msg: FsReadDirAt) -> FsDir:
        return FsDir([self._info(fi) for fi in await self.volume.readdir_of(msg.directory)])

    @handles(FsClose)
    async def on_close(self, env: Envelope, msg: FsClose) -> None:
        if msg.size < 0:
            await self.volume.close(msg.handle)
            return
        written = (msg.write_start, msg.write_end) if 0 <= msg.write_start < msg.write_end else None
        io = self._io
        io.data_written = msg.data_written and written is not None
        try:
            await self.volume.set_size(msg.handle, msg.size, zero_fill=True, written=written)
        finally:  # the handle goes whatever the publish met; its error is the reply
            io.data_written = False
            await self.volume.close(msg.handle)

    @handles(FsStat)
    async def on_stat(self, env: Envelope, msg: FsStat) -> FsInfo:
        return self._info(await self.volume.stat(msg.path))

    @handles(FsStatHandle)
    async def on_stat_handle(self, env: Envelope, msg: FsStatHandle) -> FsInfo:
        return self._info(await self.volume.stat(msg.handle))

    @handles(FsReadDir)
    async def on_readdir(self, env: Envelope, msg: FsReadDir) -> FsDir:
        return FsDir([self._info(fi) for fi in await self.volume.readdir(msg.path)])

    @handles(FsMkdir)
    async def on_mkdir(self, env: Envelope, msg: FsMkdir) -> FsInfo:
        return self._info(await self.volume.mkdir(msg.path))

    @handles(FsRmdir)
    async def on_rmdir(self, env: Envelope, msg: FsRmdir) -> None:
        await self.volume.rmdir(msg.path)

    @handles(FsUnlink)
    async def on_unlink(self, env: Envelope, msg: FsUnlink) -> None:
        await self.volume.unlink(msg.path)

    @handles(FsRename)
    async def on_rename(self, env: Envelope, msg: FsRename) -> None:
        await self.volume.rename(msg.src, msg.dst)

    @handles(FsMkdirAt)
    async def on_mkdir_at(self, env: Envelope, msg: FsMkdirAt) -> FsInfo:
        return self._info(await self.volume.mkdir_at(msg.directory, msg.name))

    @handles(FsRmdirAt)
    async def on_rmdir_at(self, env: Envelope, msg: FsRmdirAt) -> None:
        await self.volume.rmdir_at(msg.directory, msg.name)

    @handles(FsUnlinkAt)
    async def on_unlink_at(self, env: Envelope, msg: FsUnlinkAt) -> None:
        await self.volume.unlink_at(msg.directory, msg.name)

    @handles(FsRenameAt)
    async def on_rename_at(self, env: Envelope, msg: FsRenameAt) -> None:
        await self.volume.rename_at(msg.src_directory, msg.src_name,
                                    msg.dst_directory, msg.dst_name)

    @handles(FsForget)
    async def on_forget(self, env: Envelope, msg: FsForget) -> None:
        self.volume.forget(msg.file_ids)

    @handles(MapRange)
    async def on_map_range(self, env: Envelope, msg: MapRange) -> Mapped:
        vol = self.volume
        start = self._io.partition_start
        extents = [
            FileExtent(e.file_offset, start + e.lba, e.count)
            for e in await vol.extents(msg.handle, msg.offset, msg.length)
        ]
        size = (await vol.stat(msg.handle)).size
        # Reserved clusters past the size nobody wrote hold stale bytes the kernel file
        # driver would zero anyway: the cache zero-fills their pages without a disk read.
        cs = vol.boot.cluster_size
        unwritten = 0 <= max(msg.zero_from, -(-size // cs) * cs) <= msg.offset
        if extents:
            await self.endpoint.send(
                self.cache,
                CacheRead(
                    self.device, [Extent(e.lba, e.count) for e in extents], msg.notify, msg.tag,
                    unwritten and msg.zero_from >= 0,
                ),
            )
        return Mapped(msg.tag, size, extents)

    @handles(FsSetSize)
    async def on_set_size(self, env: Envelope, msg: FsSetSize) -> FsInfo:
        # zero_fill through the cache: pages wholly inside new clusters are supplied as
        # zero frames without a disk read (CacheSectorIO maps writes with zero_fill).
        written = (msg.write_start, msg.write_end) if 0 <= msg.write_start < msg.write_end else None
        vol = self.volume
        io = self._io
        io.data_written = msg.data_written and written is not None
        try:
            await vol.set_size(msg.handle, msg.size, zero_fill=True,
                               allocate_only=msg.allocate_only, written=written)
        finally:
            io.data_written = False
        info = self._info(await vol.stat(msg.handle))
        return msgspec.structs.replace(info, alloc_size=vol.allocated(msg.handle))

    @handles(FsSetTimes)
    async def on_set_times(self, env: Envelope, msg: FsSetTimes) -> None:
        await self.volume.set_times(msg.handle, msg.mtime)

    @handles(FsFsync)
    async def on_fsync(self, env: Envelope, msg: FsFsync) -> None:
        await self.volume.fsync(msg.handle or None)

    @handles(FsStatFs)
    async def on_statfs(self, env: Envelope, msg: FsStatFs) -> FsVolume:
        vol = self.volume
        info = vol.statfs()
        geo = self.geometry
        assert geo is not None
        align = geo.alignment_offset * geo.logical_sector_size
        return FsVolume(
            self.device,
            info.label,
            geo.logical_sector_size,
            geo.alignment_offset,
            self._io.partition_start,
            info.cluster_size,
            info.total_clusters,
            info.free_clusters,
            vol.data_alignment_ok(PAGE_SIZE, align),
            vol.read_only,
            {FAT_TYPE: info.fat_type},
        )
