"""Mount repair of a dirty volume: each state the write order can leave behind, repaired.

Each test makes a clean image, leaves one crash state on it (the volume is
mounted, changed part way the way an interrupted operation would, and never
unmounted, so the dirty flag stays set), mounts it again and checks that the
repair fixed exactly that, counted it, and that ``fsck.fat -n`` is then clean.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

import microkernel
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio

FATS = pytest.mark.parametrize("fat", [12, 16, 32])
SIZES = {12: ("4M", 2048), 16: ("16M", 4096), 32: ("34M", 512)}


def _image(tmp_path: Path, fat: int) -> Path:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    size, cluster = SIZES[fat]
    microkernel.mkfs(image, size=size, fat=fat, cluster_size=cluster)
    return image


async def _crashed(image: Path) -> tuple[FatVolume, FileSectorIO]:
    """A read-write mount that will be abandoned without unmount (a power cut)."""
    io = FileSectorIO(image)
    return await FatVolume.mount(io), io


async def _remount(image: Path) -> FatVolume:
    io = FileSectorIO(image)
    vol = await FatVolume.mount(io)
    assert vol.was_dirty
    return vol


async def _finish(vol: FatVolume, image: Path) -> None:
    await vol.unmount()
    assert isinstance(vol.io, FileSectorIO)
    vol.io.close()
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()


@FATS
async def test_lost_clusters_are_freed(tmp_path: Path, fat: int) -> None:
    image = _image(tmp_path, fat)
    vol, io = await _crashed(image)
    free = vol.fat.free_count
    vol.fat.allocate(3)  # an allocation whose entry never reached the disk
    await vol.fsync()
    io.close()
    vol = await _remount(image)
    assert vol.fat.free_count == free and vol.repairs == 1
    assert any("3 lost cluster(s) freed" in p for p in vol.problems)
    await _finish(vol, image)


@FATS
async def test_clusters_beyond_the_size_are_trimmed(tmp_path: Path, fat: int) -> None:
    image = _image(tmp_path, fat)
    vol, io = await _crashed(image)
    await vol.create("/f.bin")
    cs = vol.boot.cluster_size
    await vol.write("/f.bin", 0, b"k" * (cs + 10))
    chain = vol.fat.chain((await vol.stat("/f.bin")).first_cluster)
    vol.fat.allocate(2, after=chain[-1])  # growth linked, size not yet written
    await vol.fsync()
    io.close()
    vol = await _remount(image)
    assert vol.repairs == 1 and any("beyond its size" in p for p in vol.problems)
    assert await vol.read("/f.bin") == b"k" * (cs + 10)
    assert len(vol.fat.chain((await vol.stat("/f.bin")).first_cluster)) == 2
    await _finish(vol, image)


@FATS
async def test_a_size_beyond_the_chain_is_cut_to_the_chain(tmp_path: Path, fat: int) -> None:
    image = _image(tmp_path, fat)
    vol, io = await _crashed(image)
    await vol.create("/f.bin")
    cs = vol.boot.cluster_size
    await vol.write("/f.bin", 0, b"s" * (3 * cs))
    chain = vol.fat.chain((await vol.stat("/f.bin")).first_cluster)
    vol.fat.truncate_chain(chain, 1)  # a FAT written without the entry's new size
    await vol.fsync()
    io.close()
    vol = await _remount(image)
    assert vol.repairs == 1 and any("cut to its chain" in p for p in vol.problems)
    assert await vol.read("/f.bin") == b"s" * cs
    await _finish(vol, image)


@FATS
async def test_an_entry_whose_first_cluster_is_free_is_emptied(tmp_path: Path, fat: int) -> None:
    """The entry reached the disk but the FAT entries of its chain did not (fsck: 'Contains a
    free cluster'): repair leaves the file empty rather than naming free clusters."""
    image = _image(tmp_path, fat)
    vol, io = await _crashed(image)
    await vol.create("/f.bin")
    await vol.write("/f.bin", 0, b"z" * (2 * vol.boot.cluster_size))
    first = (await vol.stat("/f.bin")).first_cluster
    for cluster in vol.fat.chain(first):
        vol.fat.set(cluster, 0)  # FAT entries lost, the directory entry kept
    await vol.fsync()
    io.close()
    vol = await _remount(image)
    assert vol.repairs >= 1 and any("is free; file emptied" in p for p in vol.problems)
    info = await vol.stat("/f.bin")
    assert (info.size, info.first_cluster) == (0, 0)
    assert await vol.read("/f.bin") == b""
    await _finish(vol, image)


@FATS
async def test_a_directory_entry_whose_first_cluster_is_free_is_removed(
        tmp_path: Path, fat: int) -> None:
    """A mkdir's name reached the disk but its cluster's FAT entry did not (docs/sim.md,
    seed 319, before its fix; fsck: 'Contains a free cluster'): the name is removed."""
    image = _image(tmp_path, fat)
    vol, io = await _crashed(image)
    await vol.mkdir("/keep")
    await vol.mkdir("/gone")
    await vol.create("/keep/f.bin")
    await vol.write("/keep/f.bin", 0, b"k" * 100)
    first = (await vol.stat("/gone")).first_cluster
    vol.fat.set(first, 0)  # the directory's FAT entry lost, its name kept
    await vol.fsync()
    io.close()
    vol = await _remount(image)
    assert vol.repairs >= 1 and any("is free; entry removed" in p for p in vol.problems)
    with pytest.raises(FileNotFoundError):
        await vol.stat("/gone")
    assert await vol.read("/keep/f.bin") == b"k" * 100
    await _finish(vol, image)


@FATS
async def test_a_rename_cut_between_its_entries_keeps_one_name(tmp_path: Path, fat: int) -> None:
    image = _image(tmp_path, fat)
    vol, io = await _crashed(image)
    await vol.mkdir("/d")
    await vol.create("/f.bin")
    await vol.write("/f.bin", 0, b"r" * 5000)
    found = await vol._existing("/f.bin")
    assert found.slot is not None
    target = await vol._existing("/d")
    assert target.slot is not None
    d = await vol._load_dir(target.slot.entry.cluster)
    await vol._insert(d, vol._name_entries(d, "g.bin", found.slot.entry))  # new name only
    await vol.fsync()
    io.close()
    vol = await _remount(image)
    assert vol.repairs == 1 and any("rename cut between its entries" in p for p in vol.problems)
    names = [n for n in ("/f.bin", "/d/g.bin") if await _exists(vol, n)]
    assert len(names) == 1 and await vol.read(names[0]) == b"r" * 5000
    await _finish(vol, image)


async def _exists(vol: FatVolume, path: str) -> bool:
    try:
        await vol.stat(path)
    except FileNotFoundError:
        return False
    return True


@FATS
async def test_a_clean_volume_is_not_touched(tmp_path: Path, fat: int) -> None:
    image = _image(tmp_path, fat)
    io = FileSectorIO(image)
    vol = await FatVolume.mount(io)
    await vol.create("/x")
    await vol.unmount()
    io.close()
    io = FileSectorIO(image)
    vol = await FatVolume.mount(io)
    assert not vol.was_dirty and vol.repairs == 0 and vol.problems == []
    await _finish(vol, image)


class FailingBarrierIO(FileSectorIO):
    """Fails the ``fail_at``-th barrier with EIO (a device that refused a write)."""

    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.count, self.fail_at = 0, fail_at

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        self.count += 1
        if self.count == self.fail_at:
            raise OSError(errno.EIO, "simulated write error")


async def test_a_failed_barrier_stops_all_writing_until_remount(tmp_path: Path) -> None:
    image = _image(tmp_path, 16)
    io = FailingBarrierIO(image, fail_at=0)
    vol = await FatVolume.mount(io)
    io.fail_at = io.count + 2  # the second barrier after mount: inside the first mkdir
    with pytest.raises(OSError) as info:
        await vol.mkdir("/a")
        await vol.mkdir("/b")
    assert info.value.errno == errno.EIO and vol.write_error is not None
    with pytest.raises(OSError) as info:
        await vol.create("/c")
    assert info.value.errno == errno.EIO
    await vol.unmount()  # does not pretend the volume is clean
    io.close()
    vol = await _remount(image)  # was_dirty: the repair runs
    await _finish(vol, image)
