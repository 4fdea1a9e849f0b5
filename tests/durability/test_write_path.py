"""The FAT side of the write path through the real cache and driver: bytes written to the disk.

The test plays the kernel file driver's part with the calls the file-system
protocol offers for it: reserve with ``FsSetSize(allocate_only=True,
write_start, write_end)``, write the data into the cache pages, publish the
size with a plain ``FsSetSize`` naming what was written, fsync, close.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.protocol import Ok
from servers.fat.cacheio import CacheSectorIO
from servers.fat.server import FatServer
from servers.fs.protocol import FsClose, FsFsync, FsInfo, FsOpen, FsOpened, FsSetSize, FsUnlink

pytestmark = pytest.mark.anyio

MIB = 1 << 20


async def _write_through_cache(system: microkernel.System, fat: FatServer, handle: int,
                               data: bytes) -> None:
    """Put ``data`` at file offset 0 into the cache pages of the file's clusters (dirty)."""
    io = fat.volume.io
    assert isinstance(io, CacheSectorIO)
    pages = CacheSectorIO(system.kernel, system.memory, device=io.device,
                          sector_size=io.sector_size, partition_start=io.partition_start,
                          total_sectors=io.total_sectors)
    for extent in await fat.volume.extents(handle, 0, len(data)):
        chunk = data[extent.file_offset:extent.file_offset + extent.count * io.sector_size]
        await pages.write(extent.lba, chunk)


async def test_a_new_4_mib_file_and_fsync_write_at_most_4_mib_and_128_kib(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=64 * MIB, fat=16)
    async with microkernel.boot(image=image, memory="64M") as system:
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        kernel = system.kernel
        before = system.statistics()
        opened: FsOpened = await kernel.call("fat0", FsOpen("/big.bin", create=True), FsOpened)
        h, size = opened.handle, 4 * MIB
        reserved: FsInfo = await kernel.call(
            "fat0", FsSetSize(h, 2 * size, allocate_only=True, write_start=0, write_end=size),
            FsInfo)
        assert reserved.size == 0 and reserved.alloc_size == 2 * size
        await _write_through_cache(system, fat, h, b"\x5a" * size)
        await kernel.call("fat0", FsSetSize(h, size, write_start=0, write_end=size), FsInfo)
        await kernel.call("fat0", FsFsync(h), Ok, timeout=60)
        await kernel.call("fat0", FsClose(h), Ok)
        written = system.statistics().delta(before).disk_write_bytes
        print(f"4 MiB file + fsync: disk_write_bytes {written}")
        assert size <= written <= size + 128 * 1024, written
        assert await fat.volume.read("/big.bin") == b"\x5a" * size


async def test_data_of_a_file_unlinked_before_writeback_is_never_written(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=64 * MIB, fat=16)
    async with microkernel.boot(image=image, memory="64M") as system:
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        kernel = system.kernel
        opened: FsOpened = await kernel.call("fat0", FsOpen("/tmp.bin", create=True), FsOpened)
        h = opened.handle
        await kernel.call("fat0", FsSetSize(h, 2 * MIB, allocate_only=True, write_start=0,
                                            write_end=2 * MIB), FsInfo)
        await _write_through_cache(system, fat, h, b"t" * 2 * MIB)  # dirty, never published
        assert fat.volume.io.barriers  # type: ignore[attr-defined]
        before = system.statistics()
        await kernel.call("fat0", FsClose(h), Ok)  # the reservation is freed: pages discarded
        await kernel.call("fat0", FsUnlink("/tmp.bin"), Ok)
        await kernel.call("fat0", FsFsync(0), Ok, timeout=60)
        written = system.statistics().delta(before).disk_write_bytes
        assert written < 64 * 1024, written  # metadata only: the freed pages were discarded


async def test_zero_fill_of_new_clusters_reads_nothing_from_the_disk(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=64 * MIB, fat=16)
    async with microkernel.boot(image=image, memory="64M") as system:
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        kernel = system.kernel
        opened: FsOpened = await kernel.call("fat0", FsOpen("/z.bin", create=True), FsOpened)
        before = system.statistics()
        await kernel.call("fat0", FsSetSize(opened.handle, 3 * MIB), FsInfo)  # zero filled
        delta = system.statistics().delta(before)
        assert delta.disk_read_bytes == 0, delta.disk_read_bytes
        assert delta.disk_write_bytes >= 3 * MIB  # the zeros are on the disk before the size
        assert await fat.volume.read("/z.bin") == bytes(3 * MIB)
        await kernel.call("fat0", FsClose(opened.handle), Ok)


async def test_one_read_and_one_write_of_three_times_the_cache(tmp_path: Path) -> None:
    """``f.write(data)`` and ``f.read()`` of 6 MiB through a 2 MiB cache, each one call:
    requests to the cache are bounded and the file library streams (issue 11, problem 5)."""
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=32 * MIB, fat=16)
    data = bytes(range(251)) * (6 * MIB // 251 + 1)
    data = data[:6 * MIB]
    cfg = SystemConfig(memory="16M", devices=[DeviceConfig(image=str(image), name="disk0")],
                       cache=CacheConfig(pages=512))  # 2 MiB of cache
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        async with await proc.open("/big.bin", "wb") as f:
            assert await f.write(data) == len(data)
        async with await proc.open("/big.bin", "rb") as f:
            got = await f.read()
        assert got == data
        assert system.statistics().cache_evictions > 0
