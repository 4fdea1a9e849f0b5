"""A small booted system for cache tests: router, RAM, one driver, the cache, a page holder.

The holder registers as ``vfs`` (the cache's default holder and the usual
notify port) and records every ``SectorsReady``/``CacheFailed``/``GiveBack``;
how it answers ``GiveBack`` is a per-test policy. Test code talks to the cache
through a reply-only ``fs`` port, the way the file system would.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from drivers.ahci import AhciDriver
from drivers.base import BlockDriver
from drivers.protocol import IoDone, Read, Write
from drivers.ramdisk import RamDisk
from microkernel.ipc import Endpoint, Envelope, Router
from microkernel.memory import PAGE_SIZE, PhysicalMemory
from microkernel.server import Server, handles
from servers.cache.protocol import (
    CacheFailed,
    CacheMap,
    CacheRead,
    Extent,
    GiveBack,
    GiveBackDone,
    PageRef,
    PageRun,
    Pages,
    Release,
    SectorsReady,
)
from servers.cache.server import CacheServer


@dataclass(frozen=True)
class Ready:
    """A ``SectorsReady`` as the holder saw it, with its runs also expanded page by page."""

    tag: int
    device: str
    runs: list[PageRun]
    pages: list[PageRef]


# A hang guard, not a timing assertion: a broken cache fails the test instead of hanging it.
GUARD_S = 20.0


def sector_pattern(lba: int, sector_size: int) -> bytes:
    """Recognisable, never-zero bytes for sector ``lba``: its number and a marker, repeated."""
    return struct.pack("<II", lba, 0xC0FFEE) * (sector_size // 8)


def make_image(path: Path, sectors: int, sector_size: int = 512) -> Path:
    path.write_bytes(b"".join(sector_pattern(i, sector_size) for i in range(sectors)))
    return path


class Recording:
    """Mixin for drivers: remember every Read/Write command the cache sent."""

    reads: list[Read]
    writes: list[Write]

    def _record_init(self) -> None:
        self.reads = []
        self.writes = []


class CountingRamDisk(RamDisk, Recording):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record_init()

    async def _on_read(self, env: Envelope, msg: Read) -> IoDone:
        self.reads.append(msg)
        return await self._io(msg.lba, msg.count, msg.sg, write=False, fua=False)

    async def _on_write(self, env: Envelope, msg: Write) -> IoDone:
        self.writes.append(msg)
        return await self._io(msg.lba, msg.count, msg.sg, write=True, fua=msg.fua)


class CountingAhci(AhciDriver, Recording):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record_init()

    async def _on_read(self, env: Envelope, msg: Read) -> IoDone:
        self.reads.append(msg)
        return await self._io(msg.lba, msg.count, msg.sg, write=False, fua=False)


class Holder(Server):
    """Stands in for the kernel file driver: receives notifications, holds pins, gives back."""

    protocol = SectorsReady | CacheFailed | GiveBack
    concurrent = False

    def __init__(self, name: str, router: Router, cache: str = "cache") -> None:
        super().__init__(name, router)
        self.cache = cache
        self.results: dict[int, Ready | CacheFailed] = {}
        self.spp = 8  # pages per sector of the device (set by booted())
        self.held: dict[str, list[int]] = {}
        self.give_backs: list[GiveBack] = []
        self.policy = "release"  # "release": give back every pin; "refuse": answer 0
        self._arrived: anyio.Event | None = None

    async def setup(self) -> None:
        self._arrived = anyio.Event()

    def _signal(self) -> None:
        assert self._arrived is not None
        self._arrived.set()
        self._arrived = anyio.Event()

    @handles(SectorsReady)
    async def on_ready(self, env: Envelope, msg: SectorsReady) -> None:
        pages = [ref for run in msg.runs for ref in run.refs(self.spp)]
        self.results[msg.tag] = Ready(msg.tag, msg.device, msg.runs, pages)
        self.held.setdefault(msg.device, []).extend(p.lba for p in pages)
        self._signal()

    @handles(CacheFailed)
    async def on_failed(self, env: Envelope, msg: CacheFailed) -> None:
        self.results[msg.tag] = msg
        self._signal()

    @handles(GiveBack)
    async def on_give_back(self, env: Envelope, msg: GiveBack) -> None:
        self.give_backs.append(msg)
        released = 0
        if self.policy == "release":
            for device, pages in self.held.items():
                await self.endpoint.send(self.cache, Release(device, pages))
                released += len(pages)
            self.held.clear()
        await self.endpoint.send(self.cache, GiveBackDone(msg.request, released))

    async def result(self, tag: int) -> Ready | CacheFailed:
        with anyio.fail_after(GUARD_S):
            while tag not in self.results:
                assert self._arrived is not None
                await self._arrived.wait()
        return self.results[tag]

    async def ready(self, tag: int) -> Ready:
        result = await self.result(tag)
        assert isinstance(result, Ready), result
        return result

    async def release(self, device: str, pages: list[int]) -> None:
        """Give pins back like the VFS does when it unmaps."""
        held = self.held.get(device, [])
        for lba in pages:
            held.remove(lba)
        await self.endpoint.send(self.cache, Release(device, pages))


@dataclass
class System:
    router: Router
    memory: PhysicalMemory
    driver: BlockDriver
    cache: CacheServer
    holder: Holder
    fs: Endpoint
    image: Path
    sector_size: int
    tags: list[int] = field(default_factory=lambda: [0])

    @property
    def reads(self) -> list[Read]:
        assert isinstance(self.driver, Recording)
        return self.driver.reads

    @property
    def writes(self) -> list[Write]:
        assert isinstance(self.driver, Recording)
        return self.driver.writes

    def next_tag(self) -> int:
        self.tags[0] += 1
        return self.tags[0]

    async def request(self, lba: int, count: int, *, zero_fill: bool = False) -> int:
        """Send a CacheRead (notify = the holder); returns its tag."""
        tag = self.next_tag()
        await self.fs.send("cache", CacheRead("disk", [Extent(lba, count)], "vfs", tag, zero_fill))
        return tag

    async def read(self, lba: int, count: int, *, zero_fill: bool = False) -> Ready:
        return await self.holder.ready(await self.request(lba, count, zero_fill=zero_fill))

    async def call(self, msg: msgspec.Struct, reply: type[Any] = Any) -> Any:
        with anyio.fail_after(GUARD_S):
            return await self.fs.call("cache", msg, reply)

    async def map(self, lba: int, count: int, *, zero_fill: bool = False) -> list[PageRef]:
        pages: Pages = await self.call(CacheMap("disk", [Extent(lba, count)], zero_fill), Pages)
        return pages.pages

    def frame(self, phys: int) -> bytes:
        return self.memory.view(phys, PAGE_SIZE).tobytes()

    def expected_page(self, page_lba: int) -> bytes:
        """What the frame of ``page_lba`` must hold: the image's sectors, zero outside the disk."""
        size = self.sector_size
        total = self.driver.total_sectors
        return b"".join(
            sector_pattern(s, size) if 0 <= s < total else bytes(size)
            for s in range(page_lba, page_lba + PAGE_SIZE // size)
        )

    def disk_sector(self, lba: int) -> bytes:
        """The device's current bytes (the ramdisk memfd or the image file), bypassing everything."""
        import os

        return os.pread(self.driver.fd, self.sector_size, lba * self.sector_size)


@asynccontextmanager
async def booted(
    tmp_path: Path,
    *,
    sectors: int = 1024,
    sector_size: int = 512,
    capacity_pages: int = 64,
    driver: type[BlockDriver] = CountingRamDisk,
    driver_options: dict[str, Any] | None = None,
    cache_options: dict[str, Any] | None = None,
    memory_size: int = 4 << 20,
    low_size: int | None = None,
) -> AsyncIterator[System]:
    """Boot driver, holder and cache in dependency order; stop them in reverse."""
    router = Router()
    memory = PhysicalMemory(memory_size, low_size=low_size, counters=router.counters)
    image = make_image(tmp_path / "disk.img", sectors, sector_size)
    options = {"logical_sector_size": sector_size, **(driver_options or {})}
    disk = driver("disk", router, memory, image, **options)
    holder = Holder("vfs", router)
    holder.spp = PAGE_SIZE // sector_size
    cache = CacheServer(
        "cache",
        router,
        memory,
        devices={"disk": "disk"},
        capacity_pages=capacity_pages,
        **{"writeback_interval": None, "giveback_timeout": GUARD_S, **(cache_options or {})},
    )
    fs = router.register("fs", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(disk.serve)
        await tg.start(holder.serve)
        await tg.start(cache.serve)
        try:
            yield System(router, memory, disk, cache, holder, fs, image, sector_size)
        finally:
            with anyio.fail_after(GUARD_S):
                await cache.stop()
                await holder.stop()
                await disk.stop()
    memory.close()
