"""The kernel file driver's write path: reservations, publishing, what reaches the disk.

A writer's reservation is allocated in the file system but never becomes size
on disk: the directory entry grows only once the data below it is in the
cache (``Flusher.publish``), so a crash at any time shows the written bytes and
not the reservation's zeros.
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path

import anyio
import pytest

import microkernel
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype, run
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio

MIB = 1 << 20
OLD = bytes(range(256)) * 4  # 1024 bytes


async def test_a_crash_after_an_append_shows_the_appended_bytes_not_the_reservation(
    make_image: ImageFactory, tmp_path: Path
) -> None:
    """Append 100 bytes, flush, wait, copy the image while the file is open (no unmount)."""
    image = make_image({"/log.txt": OLD})
    cfg = SystemConfig(memory="64M", devices=[DeviceConfig(image=str(image))],
                       cache=CacheConfig(writeback_interval=0.2))
    expected = OLD + b"A" * 100
    snapshot = tmp_path / "cut.img"
    seen: list[int] = []
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("appender")
        f = await proc.open("/log.txt", "ab")
        await f.write(b"A" * 100)
        await f.flush()
        on_disk = b""
        with anyio.move_on_after(10):
            while on_disk != expected:
                await anyio.sleep(0.2)
                shutil.copyfile(image, snapshot)  # a power cut now: the disk as it is
                on_disk = mtype(snapshot, "/log.txt")
                seen.append(len(on_disk))
        assert on_disk == expected, seen
        assert all(n <= len(expected) for n in seen), seen  # never the reservation
        assert f.size == len(expected)
        await f.close()
    fsck_ok(image)
    assert mtype(image, "/log.txt") == expected


async def test_a_new_4_mib_file_and_fsync_write_at_most_4_mib_and_128_kib(tmp_path: Path) -> None:
    """Through the whole stack: nothing zero-filled that the data covers, nothing twice."""
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=64 * MIB, fat=16)
    data = bytes(range(251)) * (4 * MIB // 251) + bytes(4 * MIB % 251)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("writer")
        before = system.statistics()
        async with await proc.open("/big.bin", "wb") as f:
            await f.write(data)
            await f.fsync()
        written = system.statistics().delta(before).disk_write_bytes
        print(f"4 MiB file + fsync + close: disk_write_bytes {written}")
        assert len(data) <= written <= len(data) + 128 * 1024, written
        assert await proc.read_file("/big.bin") == data
    require_tool("mtype", "fsck.fat")
    fsck_ok(image)
    assert mtype(image, "/big.bin") == data


async def test_a_time_set_before_close_is_kept(tmp_path: Path) -> None:
    """Close gives the reservation back without stamping the current time over ours."""
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * MIB, fat=16)
    mtime = time.mktime((2001, 2, 3, 4, 5, 6, 0, 0, -1))
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("cp-p")
        async with await proc.open("/kept.txt", "wb") as f:
            await f.write(b"x" * 10_000)
            await f.set_times(mtime)
        assert abs((await proc.stat("/kept.txt")).mtime - mtime) <= 2  # FAT: 2 s resolution
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("reader")
        info = await proc.stat("/kept.txt")
        assert abs(info.mtime - mtime) <= 2 and info.size == 10_000


async def test_growth_inside_a_page_already_fetched_keeps_its_bytes_on_the_copy_path(
    make_image: ImageFactory,
) -> None:
    """512-byte clusters, unaligned: page 0 was copied when the file had 1000 bytes."""
    head = bytes(range(200)) * 5
    image = make_image({"/f.bin": head}, aligned=False)
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/f.bin", "r+b") as f:
            assert not f.zero_copy
            assert await f.read(10) == head[:10]
            f.seek(1000)
            await f.write(b"B" * 3000)
        assert await proc.read_file("/f.bin") == head + b"B" * 3000
    fsck_ok(image)
    assert mtype(image, "/f.bin") == head + b"B" * 3000


async def test_growth_inside_a_fetched_page_keeps_its_bytes_under_enospc_on_fat12(
    tmp_path: Path,
) -> None:
    """FAT12, 512-byte clusters, the disk nearly full: no room for slack, growth still right."""
    require_tool("mkfs.fat", "fsck.fat", "mtype")
    image = tmp_path / "fat12.img"
    run("mkfs.fat", "-C", "-F", "12", "-s", "1", "-S", "512", image, "1024")
    head = bytes(range(200)) * 5
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/f.bin", "wb") as f:
            await f.write(head)
        volume = await proc.statfs("/")
        room = volume.free_clusters * volume.cluster_size
        async with await proc.open("/fill.bin", "wb") as fill:  # leave 8 KiB: no slack fits
            await fill.write(b"\xee" * (room - 8192))
        async with await proc.open("/f.bin", "r+b") as f:
            assert not f.zero_copy
            assert await f.read(10) == head[:10]
            f.seek(1000)
            await f.write(b"B" * 3000)
            with pytest.raises(OSError) as full:
                await f.write(b"C" * 16384)  # more than is left: ENOSPC, nothing half-written
            assert full.value.errno == errno.ENOSPC
        assert await proc.read_file("/f.bin") == head + b"B" * 3000
    fsck_ok(image)
    assert mtype(image, "/f.bin") == head + b"B" * 3000


async def test_a_small_create_is_open_publish_close_with_the_size_in_fs_close(
    tmp_path: Path,
) -> None:
    """The open reserves and maps the first pages (no reserve, no CachePart); FsClose publishes."""
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * MIB, fat=16)
    data = bytes(range(256)) * 16 + b"tail"  # 4100 bytes: two pages, the second partial
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("creator")
        c = system.counters
        calls, by_type = c.syscalls, dict(c.syscalls_by_type)
        messages = dict(c.messages_by_type)
        started = time.time()
        async with await proc.open("/new.bin", "wb") as f:
            await f.write(data)
        assert c.syscalls - calls == 3  # Open (reserve + map), SetSize (publish), Close
        assert c.syscalls_by_type["CachePart"] == by_type.get("CachePart", 0)
        kinds = ("FsSetSize", "FsClose", "FsSetTimes", "MapRange")
        sent = {m: c.messages_by_type[m] - messages.get(m, 0) for m in kinds}
        # all in open and close; the open's reserved clusters come with FsOpened, so the
        # kernel file driver asks the cache for their zero pages without a MapRange
        assert sent == {"FsSetSize": 0, "FsClose": 1, "FsSetTimes": 0, "MapRange": 0}, sent
        info = await proc.stat("/new.bin")
        assert info.size == len(data) and info.mtime >= started - 2  # FAT: 2 s resolution
        assert await proc.read_file("/new.bin") == data
    require_tool("mtype", "fsck.fat")
    fsck_ok(image)
    assert mtype(image, "/new.bin") == data


async def test_an_extending_write_gets_its_pages_with_its_reservation(tmp_path: Path) -> None:
    """Past the open's reservation the write reserves (doubling) and maps in the same call."""
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=32 * MIB, fat=16)
    chunk = bytes(range(256)) * 1024  # 256 KiB
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("writer")
        c = system.counters
        async with await proc.open("/grow.bin", "wb") as f:
            for _ in range(16):  # 4 MiB, each write past the reservation's first pages
                parts = c.syscalls_by_type["CachePart"]
                reserves = c.messages_by_type["FsSetSize"]
                await f.write(chunk)
                if c.messages_by_type["FsSetSize"] > reserves:  # it reserved: no part asked
                    assert c.syscalls_by_type["CachePart"] == parts
            reserved = c.messages_by_type["FsSetSize"]
        assert reserved <= 4, reserved  # 256 KiB at open, then doubling: not one per write
        assert await proc.read_file("/grow.bin") == chunk * 16
    require_tool("mtype", "fsck.fat")
    fsck_ok(image)
    assert mtype(image, "/grow.bin") == chunk * 16


async def test_reserved_room_is_mapped_ahead_as_clean_zeros(tmp_path: Path) -> None:
    """A reservation maps room past its write; pages nobody fills there write nothing.

    The cache hands a file's reserved pages out clean (zeros that are written only
    once the process stores into them), so mapping the room costs no disk writes
    while saving the next writes their ``CachePart``.
    """
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=32 * MIB, fat=16)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("writer")
        c = system.counters
        before = system.statistics()
        async with await proc.open("/room.bin", "wb") as f:
            await f.write(b"x" * MIB)  # reserves 1 MiB of room beyond it, and maps it
            parts = c.syscalls_by_type["CachePart"]
            await f.write(b"y" * (MIB // 2))  # inside the mapped room: no CachePart
            assert c.syscalls_by_type["CachePart"] == parts
            await f.fsync()  # writes every dirty page of the device: zeros would go too
            written = system.statistics().delta(before).disk_write_bytes
        data = MIB + MIB // 2
        assert data <= written < data + 128 * 1024, written  # not the 512 KiB of room
        assert await proc.read_file("/room.bin") == b"x" * MIB + b"y" * (MIB // 2)
    require_tool("mtype", "fsck.fat")
    fsck_ok(image)


async def test_a_create_writes_its_data_once_at_close_and_the_file_system_not_again(
    tmp_path: Path,
) -> None:
    """The last close marks and writes a growth's pages in one ``MarkDirty(write=True)``
    (so it meets their write error) and ``FsClose(data_written)`` spares the file
    system a second ``Writeback`` of them: the data reaches the device once, before the
    entry (the lazy groups still flush it first), and reads back after a remount."""
    require_tool("mtype", "fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * MIB, fat=16)
    cfg = SystemConfig(memory="32M", devices=[DeviceConfig(image=str(image))],
                       cache=CacheConfig(writeback_interval=None))  # no background writes
    data = bytes(range(256)) * 16  # one page
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("creator")
        c = system.counters
        writebacks, before = c.messages_by_type["Writeback"], system.statistics()
        async with await proc.open("/once.bin", "wb") as f:
            await f.write(data)
        assert c.messages_by_type["Writeback"] == writebacks  # nobody asked to write it again
        assert system.statistics().delta(before).disk_write_bytes == len(data)  # data only
    fsck_ok(image)
    assert mtype(image, "/once.bin") == data
