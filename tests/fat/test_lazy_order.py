"""Lazy ordered write groups through the whole system (servers/fat/cacheio.py, writeorder.py).

Many creates share a few device flushes; a change that would have to come both
before and after pending pages forces a write-out first; clusters freed in a
pending group are not handed out again until the free is durable.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import microkernel
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.crashcheck import damage, fsck
from servers.cache.protocol import MarkDirty, PageRef, Writeback
from servers.fat.cacheio import CacheSectorIO
from servers.fat.fat_table import FatTable
from servers.fat.server import FatServer
from tests.oracles import fsck_fat, mtools_image, require_tool, run_tool

pytestmark = pytest.mark.anyio


def _quiet(image: Path) -> SystemConfig:
    """No background write-out: only the operations decide when groups go out."""
    return SystemConfig(memory="32M", devices=[DeviceConfig(image=str(image))],
                        cache=CacheConfig(writeback_interval=None))


def _io(system: microkernel.System) -> CacheSectorIO:
    fat = system.server("fat0")
    assert isinstance(fat, FatServer)
    io = fat.volume.io
    assert isinstance(io, CacheSectorIO)
    return io


@pytest.mark.parametrize("fat", [16, 32])
async def test_many_creates_share_a_few_flushes_and_fsync_makes_them_durable(
        tmp_path: Path, fat: int) -> None:
    require_tool("fsck.fat", "mtype")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=(16 if fat == 16 else 270) * 2**20, fat=fat)
    count = 30
    async with microkernel.boot(config=_quiet(image)) as system:
        io = _io(system)
        assert io.lazy
        proc = await system.spawn("p")
        await proc.mkdir("/d")
        before = io.barriers
        for i in range(count):
            async with await proc.open(f"/d/f{i}.bin", "wb") as f:
                await f.write(bytes([i]) * 4096)
        # The first create in the new directory follows the pending mkdir (a forced
        # write-out of its groups); after that, none until fsync: not one per create.
        assert io.barriers - before <= 4, io.barriers - before
        assert io.pending_writes > 0
        async with await proc.open("/d/f0.bin", "rb") as f:
            await f.fsync()
        assert io.pending_writes == 0
        assert io.barriers - before <= 8, io.barriers - before  # 6 per create before
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()
    out = run_tool("mtype", "-i", mtools_image(image), "::/d/f7.bin")
    assert out.stdout == bytes([7]) * 4096


async def test_an_unlink_after_a_pending_create_writes_the_pending_pages_first(
        tmp_path: Path) -> None:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    async with microkernel.boot(config=_quiet(image)) as system:
        io = _io(system)
        proc = await system.spawn("p")
        await proc.write_file("/a.bin", b"a" * 10000)
        forced = io.forced
        await proc.unlink("/a.bin")  # entry first, then the free: the FAT page must go first
        assert io.forced > forced  # one per FAT copy page
        await proc.write_file("/b.bin", b"b" * 10000)
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()


def test_freed_clusters_are_held_until_the_free_is_durable() -> None:
    table = FatTable(bytes(4 * 64), 32, 40, 512)
    table.quarantine = True
    first = table.allocate(4)
    table.free_chain(first[0])
    assert set(first) == table.held and table.available == table.free_count - 4
    again = table.allocate(4)
    assert not set(again) & set(first)  # the old file may still own them on the disk
    table.release_held()
    assert table.held == set() and table.available == table.free_count
    assert table.allocate(1, after=first[0] - 1) == [first[0]]


async def test_a_new_files_reserved_pages_come_as_zeros_without_a_disk_read(
        tmp_path: Path) -> None:
    """``MapRange.zero_from``: reserved clusters nobody wrote are not read (stale bytes)."""
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    async with microkernel.boot(config=_quiet(image)) as system:
        proc = await system.spawn("p")
        stale = bytes([0xA5]) * 3 * 4096
        await proc.write_file("/old.bin", stale)  # clusters with bytes on the disk ...
        async with await proc.open("/old.bin", "rb") as f:
            await f.fsync()
        await proc.unlink("/old.bin")  # ... freed, and (after a write-out) reused
        before = system.statistics()
        for i in range(4):
            async with await proc.open(f"/new{i}.bin", "wb") as f:
                await f.write(b"n" * 100)
        assert system.statistics().delta(before).disk_read_bytes == 0
        for i in range(4):
            async with await proc.open(f"/new{i}.bin", "rb") as f:
                assert await f.read() == b"n" * 100


async def test_unmount_refuses_writes_that_would_pass_the_clean_flag(tmp_path: Path) -> None:
    """An operation still in flight at unmount cannot queue a change after the clean flag."""
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    async with microkernel.boot(config=_quiet(image)) as system:
        proc = await system.spawn("p")
        await proc.write_file("/a.bin", b"a" * 5000)
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        io = _io(system)
        await fat.volume.unmount()
        assert io.pending_writes == 0
        with pytest.raises(OSError):
            await io.write(fat.volume.boot.fat_start, bytes(512))
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()


async def test_an_operation_stopped_part_way_hands_its_order_to_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A close clears an entry, then the FAT page's map fails (a lost reply): the free stays in
    memory only. The next operation writes it; that write must still follow the cleared entry
    (else a cut between them leaves an entry naming free clusters: docs/sim.md, seed 304)."""
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    async with microkernel.boot(config=_quiet(image)) as system:
        io = _io(system)
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        vol = fat.volume
        cs = vol.boot.cluster_size
        await vol.mkdir("/sub")
        h = await vol.open("/r.bin", create=True)
        await vol.set_size(h, 3 * cs, allocate_only=True)  # the entry names the reservation
        await vol.fsync()
        assert io.pending_writes == 0
        fat_end = (vol.boot.fat_start + vol.boot.num_fats * vol.boot.fat_size) * (
            vol.boot.bytes_per_sector // io.sector_size)
        real_map = io._map

        async def lost_fat_map(lba: int, count: int, *, zero_fill: bool) -> list[PageRef]:
            if lba < fat_end:
                raise TimeoutError(110, "cache did not answer CacheMap (a lost reply)")
            return await real_map(lba, count, zero_fill=zero_fill)

        monkeypatch.setattr(io, "_map", lost_fat_map)
        with pytest.raises(OSError):
            await vol.close(h)  # entry cleared (pending), the free never reaches a page
        monkeypatch.setattr(io, "_map", real_map)
        entry_pages = io._order.pending()
        assert entry_pages and all(p >= fat_end for p in entry_pages)
        await vol.create("/sub/y.bin")
        await vol.write("/sub/y.bin", 0, b"y")  # writes the FAT page: the free goes with it
        groups = io._order.plan()
        where = {p: n for n, group in enumerate(groups) for p in group}
        fat_pages = [p for p in where if p < fat_end]
        assert fat_pages
        # The cleared entry is durable already (written out first) or goes in an earlier group.
        assert all(e not in where or where[e] < where[f]
                   for e in entry_pages for f in fat_pages), groups


async def test_a_change_after_a_failed_write_out_does_not_reach_its_dirty_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background write-out fails after its last group was handed to the cache as dirty
    (``MarkDirty``) while a mkdir, already past its start, waits for a page. The mkdir's
    later changes must not land in those dirty pages (still held): the cache writes them
    back on its own, and the root's new entry would reach the disk without the FAT entry
    it names (an entry naming a free cluster: docs/sim.md, seed 319)."""
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    async with microkernel.boot(config=_quiet(image)) as system:
        io = _io(system)
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        vol = fat.volume
        scale = vol.boot.bytes_per_sector // io.sector_size
        root_page = io._page_of(io.partition_start + vol.boot.root_dir_start * scale)
        await vol.mkdir("/a")  # pending: its cluster, then both FAT copies, then the root
        assert root_page in io._order
        real_call, real_map = io._idempotent, io._map

        async def root_group_fails(msg: MarkDirty | Writeback, timeout: float) -> None:
            if isinstance(msg, Writeback) and root_page in msg.pages:
                raise OSError(errno.EIO, "the device refused the group (simulated)")
            await real_call(msg, timeout)

        async def write_out_fails_meanwhile(lba: int, count: int, *,
                                            zero_fill: bool) -> list[PageRef]:
            refs = await real_map(lba, count, zero_fill=zero_fill)
            if io.write_failure is None:  # the background writer ran while this map waited
                with pytest.raises(OSError):
                    await io._write_groups(None)
            return refs

        monkeypatch.setattr(io, "_idempotent", root_group_fails)
        monkeypatch.setattr(io, "_map", write_out_fails_meanwhile)
        with pytest.raises(OSError) as stopped:
            await vol.mkdir("/b")  # its new cluster's page, then the FAT: refused
        assert stopped.value.errno == errno.EIO
        assert io.write_failure is not None
        with pytest.raises(OSError):
            await vol.mkdir("/c")
    _, lines = fsck(image)
    assert damage(lines) == [], lines
