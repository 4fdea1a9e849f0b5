"""The write-order rules of docs/fat.md, each checked on the sequence of writes and barriers.

An ``OrderedIO`` records every sector write the volume issues and every barrier
between them. Writes between two barriers form a *group*; the disk may apply a
group's writes in any order, but a later group only after an earlier one. Each
rule says which region's writes must lie in a strictly earlier group than
which other region's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

import microkernel
from servers.fat.bpb import BootSector
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume

pytestmark = pytest.mark.anyio


class OrderedIO(FileSectorIO):
    """A FileSectorIO that numbers each write with the barrier group it belongs to."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.group = 0
        self.log: list[tuple[int, int, int]] = []  # (group, first sector, sector count)

    async def write(self, lba: int, data: bytes) -> None:
        await super().write(lba, data)
        self.log.append((self.group, lba, len(data) // self.sector_size))

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        self.group += 1


def region(boot: BootSector, sector: int) -> str:
    if sector < boot.fat_start:
        return "boot"
    if sector < boot.fat_start + boot.num_fats * boot.fat_size:
        return f"fat{(sector - boot.fat_start) // boot.fat_size}"
    return "data"  # FAT12/16 root directory sectors are told apart by the caller


class Recorder:
    def __init__(self, vol: FatVolume, io: OrderedIO) -> None:
        self.vol, self.io = vol, io
        self.start = 0

    def mark(self) -> None:
        self.start = len(self.io.log)

    def groups(self, sectors: set[int]) -> list[int]:
        """Barrier groups of the writes since ``mark`` touching any of ``sectors``."""
        return [g for g, lba, n in self.io.log[self.start:]
                if sectors.intersection(range(lba, lba + n))]

    def fat_groups(self) -> list[int]:
        boot = self.vol.boot
        return [g for g, lba, _ in self.io.log[self.start:] if region(boot, lba).startswith("fat")]

    def fat_copies(self) -> set[str]:
        boot = self.vol.boot
        return {region(boot, lba) for _, lba, _ in self.io.log[self.start:]
                if region(boot, lba).startswith("fat")}

    def cluster_sectors(self, clusters: list[int]) -> set[int]:
        boot = self.vol.boot
        out: set[int] = set()
        for c in clusters:
            first = boot.cluster_to_sector(c)
            out.update(range(first, first + boot.sectors_per_cluster))
        return out

    async def entry_sectors(self, path: str) -> set[int]:
        """The sector holding ``path``'s short entry."""
        info = await self.vol.stat(path)
        key, index = info.location
        boot = self.vol.boot
        per_sector = boot.bytes_per_sector // 32
        if key == -1 and boot.fat_type != 32:
            return {boot.root_dir_start + index // per_sector}
        cluster = boot.root_cluster if key == -1 else key
        chain = self.vol.fat.chain(cluster)
        offset = index * 32
        c = chain[offset // boot.cluster_size]
        return {boot.cluster_to_sector(c) + offset % boot.cluster_size // boot.bytes_per_sector}


async def _setup(tmp_path: Path, fat: int) -> tuple[FatVolume, OrderedIO, Recorder]:
    image = tmp_path / "disk.img"
    size, cluster = {12: ("4M", 2048), 16: ("16M", 4096), 32: ("34M", 512)}[fat]
    microkernel.mkfs(image, size=size, fat=fat, cluster_size=cluster)
    io = OrderedIO(image)
    vol = await FatVolume.mount(io)
    return vol, io, Recorder(vol, io)


FATS = pytest.mark.parametrize("fat", [12, 16, 32])


def before(first: list[int], then: list[int]) -> bool:
    """Every write of ``first`` lies in a barrier group strictly before every one of ``then``."""
    assert first and then, (first, then)
    return max(first) < min(then)


@FATS
async def test_growth_zero_fill_then_both_fat_copies_then_the_entry(tmp_path: Path,
                                                                    fat: int) -> None:
    vol, io, rec = await _setup(tmp_path, fat)
    await vol.create("/grow.bin")
    rec.mark()
    await vol.set_size("/grow.bin", 3 * vol.boot.cluster_size, zero_fill=True)
    chain = vol.fat.chain((await vol.stat("/grow.bin")).first_cluster)
    zero = rec.groups(rec.cluster_sectors(chain))
    entry = rec.groups(await rec.entry_sectors("/grow.bin"))
    assert before(zero, rec.fat_groups()) and before(rec.fat_groups(), entry)
    assert rec.fat_copies() == {f"fat{n}" for n in range(vol.boot.num_fats)}
    await vol.unmount()
    io.close()


async def test_a_link_and_its_new_chain_in_one_page_are_one_write(tmp_path: Path) -> None:
    """``_link`` skips the barrier between a new chain and its link when both lie in one
    4 KiB FAT page: that holds only if one write carries both (through the cache, with
    eager barriers, the page may be written back between two writes of it: the power-cut
    sweep's FAT12 seed 3 showed a link to a cluster still free on the disk)."""
    vol, io, rec = await _setup(tmp_path, 16)
    cs, bps = vol.boot.cluster_size, vol.boot.bytes_per_sector
    await vol.create("/a.bin")
    await vol.write("/a.bin", 0, b"a")  # cluster 2: FAT sector 0
    await vol.create("/b.bin")
    per_sector = bps // 2
    await vol.write("/b.bin", 0, b"b" * (2 * per_sector + 8 - 3) * cs)  # past FAT sector 1
    await vol.fsync()
    last = vol.fat.chain((await vol.stat("/a.bin")).first_cluster)[-1]
    rec.mark()
    await vol.write("/a.bin", cs, b"a")  # a new cluster, linked from the last one
    new = vol.fat.chain((await vol.stat("/a.bin")).first_cluster)[-1]

    def page(cluster: int) -> int:
        return (io.partition_offset + (vol.boot.fat_start * bps + cluster * 2)) // 4096

    # The case at issue: one page, sectors apart (two runs of dirty sectors).
    assert new * 2 // bps - last * 2 // bps >= 2 and page(last) == page(new)
    fat_writes = [(g, (io.partition_offset + lba * io.sector_size) // 4096)
                  for g, lba, _ in rec.io.log[rec.start:] if region(vol.boot, lba) == "fat0"]
    assert fat_writes and len(fat_writes) == len(set(fat_writes)), fat_writes
    await vol.unmount()
    io.close()


@FATS
async def test_shrink_and_unlink_write_the_entry_before_freeing(tmp_path: Path,
                                                                fat: int) -> None:
    vol, io, rec = await _setup(tmp_path, fat)
    await vol.create("/a.bin")
    await vol.create("/b.bin")
    await vol.write("/a.bin", 0, b"a" * 5 * vol.boot.cluster_size)
    await vol.write("/b.bin", 0, b"b" * 2 * vol.boot.cluster_size)
    await vol.fsync()
    entry = await rec.entry_sectors("/a.bin")
    rec.mark()
    await vol.set_size("/a.bin", 1)
    assert before(rec.groups(entry), rec.fat_groups())
    entry = await rec.entry_sectors("/b.bin")
    rec.mark()
    await vol.unlink("/b.bin")
    assert before(rec.groups(entry), rec.fat_groups())
    await vol.unmount()
    io.close()


@FATS
async def test_mkdir_writes_dot_entries_then_fat_then_the_name(tmp_path: Path, fat: int) -> None:
    vol, io, rec = await _setup(tmp_path, fat)
    rec.mark()
    info = await vol.mkdir("/sub")
    cluster_writes = rec.groups(rec.cluster_sectors([info.first_cluster]))
    name = rec.groups(await rec.entry_sectors("/sub"))
    assert before(cluster_writes, rec.fat_groups()) and before(rec.fat_groups(), name)
    await vol.unmount()
    io.close()


@FATS
async def test_rename_writes_the_new_name_before_removing_the_old(tmp_path: Path,
                                                                  fat: int) -> None:
    vol, io, rec = await _setup(tmp_path, fat)
    await vol.mkdir("/far")
    for name in ("/old.bin", "/far/victim.bin", "/other.bin"):
        await vol.create(name)
    await vol.write("/old.bin", 0, b"x" * 100)
    await vol.write("/far/victim.bin", 0, b"v" * 3 * vol.boot.cluster_size)
    old = await rec.entry_sectors("/old.bin")
    rec.mark()
    await vol.rename("/old.bin", "/far/new.bin")
    # The old entry is marked (NT_RENAMED_FROM), then the new one written, then the old removed.
    marked, *removed = rec.groups(old)
    new = rec.groups(await rec.entry_sectors("/far/new.bin"))
    assert before([marked], new) and before(new, removed)
    # Replacing a file: its entry is taken over in place, its clusters freed afterwards.
    await vol.write("/other.bin", 0, b"o" * 10)
    src = await rec.entry_sectors("/other.bin")
    victim = await rec.entry_sectors("/far/victim.bin")
    rec.mark()
    await vol.rename("/other.bin", "/far/victim.bin")
    assert await rec.entry_sectors("/far/victim.bin") == victim
    marked, *removed = rec.groups(src)
    assert before([marked], rec.groups(victim)) and before(rec.groups(victim), removed)
    assert before(rec.groups(src), rec.fat_groups())
    assert await vol.read("/far/victim.bin") == b"o" * 10
    # A directory moved to another parent: its '..' is rewritten before the old name goes.
    await vol.mkdir("/moving")
    moving = await rec.entry_sectors("/moving")
    dotdot = rec.cluster_sectors([(await vol.stat("/moving")).first_cluster])
    rec.mark()
    await vol.rename("/moving", "/far/moved")
    marked, *removed = rec.groups(moving)
    new = rec.groups(await rec.entry_sectors("/far/moved"))
    assert before([marked], new) and before(new, rec.groups(dotdot))
    assert before(rec.groups(dotdot), removed)
    await vol.unmount()
    io.close()


@FATS
async def test_rename_within_one_page_is_one_write(tmp_path: Path, fat: int) -> None:
    vol, io, rec = await _setup(tmp_path, fat)
    await vol.create("/first.bin")
    old = await rec.entry_sectors("/first.bin")
    rec.mark()
    await vol.rename("/first.bin", "/second name.bin")
    new = await rec.entry_sectors("/second name.bin")
    writes = [(g, lba, n) for g, lba, n in io.log[rec.start:]
              if (old | new).intersection(range(lba, lba + n))]
    assert len(writes) == 1  # both names change in one write: no cut sees both
    assert not await _exists(vol, "/first.bin")
    await vol.unmount()
    io.close()


async def _exists(vol: FatVolume, path: str) -> bool:
    try:
        await vol.stat(path)
    except FileNotFoundError:
        return False
    return True
