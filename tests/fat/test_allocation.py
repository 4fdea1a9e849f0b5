"""Allocation without publishing a size, zero fill only where nobody writes, ENOSPC, discards."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

import microkernel
from servers.fat.errors import NoSpace
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio


class CountingIO(FileSectorIO):
    """Remembers which sectors were written and which were discarded."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written: set[int] = set()
        self.discarded: set[int] = set()

    async def write(self, lba: int, data: bytes) -> None:
        await super().write(lba, data)
        self.written.update(range(lba, lba + len(data) // self.sector_size))

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        pass

    async def discard(self, lba: int, count: int) -> None:
        self.discarded.update(range(lba, lba + count))


async def _volume(tmp_path: Path, fat: int = 16) -> tuple[FatVolume, CountingIO, Path]:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    size, cluster = {12: ("4M", 2048), 16: ("16M", 4096), 32: ("34M", 512)}[fat]
    microkernel.mkfs(image, size=size, fat=fat, cluster_size=cluster)
    io = CountingIO(image)
    return await FatVolume.mount(io), io, image


def _sectors(vol: FatVolume, clusters: list[int]) -> set[int]:
    out: set[int] = set()
    for c in clusters:
        first = vol.boot.cluster_to_sector(c)
        out.update(range(first, first + vol.boot.sectors_per_cluster))
    return out


async def _clean(vol: FatVolume, io: CountingIO, image: Path) -> None:
    await vol.unmount()
    io.close()
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()


@pytest.mark.parametrize("fat", [12, 16, 32])
async def test_allocate_only_reserves_without_publishing_the_size(tmp_path: Path,
                                                                  fat: int) -> None:
    vol, io, image = await _volume(tmp_path, fat)
    cs = vol.boot.cluster_size
    free = vol.fat.free_count
    h = await vol.open("/r.bin", create=True)
    extents = await vol.set_size(h, 5 * cs, allocate_only=True)
    assert (await vol.stat(h)).size == 0 and vol.allocated(h) == 5 * cs
    assert sum(e.count for e in extents) * io.sector_size == 5 * cs
    chain = vol.fat.chain((await vol.stat(h)).first_cluster)
    assert len(chain) == 5 and not io.written & _sectors(vol, chain)  # no zero fill
    assert sum(e.count for e in await vol.extents(h, 0, 5 * cs)) * io.sector_size == 5 * cs
    size = 2 * cs + 10
    data = b"d" * size
    await vol._write_range(chain, 0, data)  # the caller writes, then publishes
    await vol.set_size(h, size, written=(0, size))
    assert (await vol.stat(h)).size == size and vol.allocated(h) == 5 * cs
    assert await vol.read(h) == data
    await vol.close(h)  # the reservation beyond the size goes back
    assert vol.fat.free_count == free - 3
    assert len(vol.fat.chain((await vol.stat("/r.bin")).first_cluster)) == 3
    await _clean(vol, io, image)


async def test_publishing_a_gap_without_a_written_range_zero_fills_it(tmp_path: Path) -> None:
    vol, io, image = await _volume(tmp_path)
    cs = vol.boot.cluster_size
    await vol.create("/old.bin")
    await vol.write("/old.bin", 0, b"\xee" * 3 * cs)
    await vol.unlink("/old.bin")  # stale bytes stay in the freed clusters
    h = await vol.open("/new.bin", create=True)
    await vol.set_size(h, 3 * cs, allocate_only=True)
    await vol.set_size(h, 3 * cs)  # a truncate up: nobody wrote these bytes
    assert await vol.read(h) == bytes(3 * cs)
    await vol.close(h)
    await _clean(vol, io, image)


async def test_clusters_about_to_be_written_whole_are_not_zero_filled(tmp_path: Path) -> None:
    vol, io, image = await _volume(tmp_path)
    cs = vol.boot.cluster_size
    h = await vol.open("/w.bin", create=True)
    await vol.set_size(h, 4 * cs + 100, written=(0, 4 * cs))
    chain = vol.fat.chain((await vol.stat(h)).first_cluster)
    assert not io.written & _sectors(vol, chain[:4])  # wholly written by the caller
    assert _sectors(vol, chain[4:]) <= io.written  # the partly written last one is zeroed
    h2 = await vol.open("/z.bin", create=True)
    await vol.set_size(h2, 2 * cs)
    assert _sectors(vol, vol.fat.chain((await vol.stat(h2)).first_cluster)) <= io.written
    await vol.close(h)
    await vol.close(h2)
    await _clean(vol, io, image)


async def test_freed_clusters_are_discarded(tmp_path: Path) -> None:
    vol, io, image = await _volume(tmp_path)
    cs = vol.boot.cluster_size
    await vol.create("/f.bin")
    await vol.write("/f.bin", 0, b"f" * 4 * cs)
    chain = vol.fat.chain((await vol.stat("/f.bin")).first_cluster)
    await vol.set_size("/f.bin", cs)
    assert _sectors(vol, chain[1:]) <= io.discarded
    await vol.unlink("/f.bin")
    assert _sectors(vol, chain) <= io.discarded
    await _clean(vol, io, image)


@pytest.mark.parametrize("allocate_only", [False, True])
async def test_enospc_leaves_nothing_allocated_or_written(tmp_path: Path,
                                                          allocate_only: bool) -> None:
    vol, io, image = await _volume(tmp_path, 12)
    h = await vol.open("/big.bin", create=True)
    free = vol.fat.free_count
    io.written.clear()
    with pytest.raises(NoSpace) as info:
        await vol.set_size(h, (free + 1) * vol.boot.cluster_size, allocate_only=allocate_only)
    assert info.value.errno == errno.ENOSPC
    assert vol.fat.free_count == free and not io.written
    assert (await vol.stat(h)).size == 0 and vol.allocated(h) == 0
    await vol.close(h)
    await _clean(vol, io, image)


async def test_publishing_size_zero_inside_a_reservation_keeps_the_chain_named(
    tmp_path: Path,
) -> None:
    """A size of 0 published while a reservation holds the chain (a truncate of a new file)
    must not drop the entry's first cluster: the reserved clusters would be leaked, and pages
    written into the reservation would belong to no cluster of the file."""
    vol, io, image = await _volume(tmp_path)
    cs = vol.boot.cluster_size
    free = vol.fat.free_count
    h = await vol.open("/t.bin", create=True)
    await vol.set_size(h, 3 * cs, allocate_only=True)
    first = (await vol.stat(h)).first_cluster
    await vol.set_size(h, 0)
    assert (await vol.stat(h)).first_cluster == first and vol.allocated(h) == 3 * cs
    data = b"q" * (cs + 5)
    await vol._write_range(vol.fat.chain(first), 0, data)  # a write into the reservation
    await vol.set_size(h, len(data), written=(0, len(data)))
    assert await vol.read(h) == data
    await vol.close(h)
    assert vol.fat.free_count == free - 2
    await _clean(vol, io, image)
