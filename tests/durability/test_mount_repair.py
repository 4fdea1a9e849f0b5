"""A crash image booted by the whole system: repaired before serving, counted, fsck-clean after."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import microkernel
from drivers.recording import image_after
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.durability.harness import record
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio


async def test_booting_a_cut_image_repairs_counts_and_leaves_it_clean(tmp_path: Path) -> None:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    journal = await record(image, seed=3, ops=16, interval=None)
    log = journal.log
    # The last cut point whose image mount repair has something to do (a crash mid-run).
    for cut in range(len(log.entries) - 1, 0, -1):
        image.write_bytes(image_after(log, cut))
        if fsck_fat(image).returncode != 0 and b"Reclaimed" in fsck_fat(image).stdout:
            break
    else:
        pytest.fail("no cut point left lost clusters")
    async with microkernel.boot(image=image, memory="32M") as system:
        assert system.statistics().volume_repairs >= 1
        proc = await system.spawn("p")
        await proc.write_file("/after.txt", b"served after the repair")
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()


class _LosingIO(FileSectorIO):
    """An image whose ``fail_at``-th write from arming on fails, as a lost reply would."""

    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at
        self.armed = False
        self.seen = 0

    async def write(self, lba: int, data: bytes) -> None:
        if self.armed:
            self.seen += 1
            if self.seen == self.fail_at:
                raise OSError(errno.ETIMEDOUT, "simulated lost reply")
        await super().write(lba, data)


async def _grow(vol: FatVolume, io: _LosingIO) -> None:
    handle = await vol.open("/f.bin", create=True)
    io.armed = True
    await vol.write(handle, 0, b"x" * 9000)


async def _mkdir(vol: FatVolume, io: _LosingIO) -> None:
    io.armed = True
    await vol.mkdir("/d")


@pytest.mark.parametrize(("fat", "operation", "fail_at"), [
    (12, _mkdir, 1), (16, _mkdir, 1), (16, _mkdir, 2), (32, _mkdir, 1), (16, _grow, 1),
    (32, _grow, 2)])
async def test_an_operation_stopped_part_way_by_an_io_error_leaves_the_volume_dirty(
        tmp_path: Path, fat: int, operation: Callable[[FatVolume, _LosingIO], Awaitable[None]],
        fail_at: int) -> None:
    # The torture finding (microkernel torture --seed 11 --ops 40 --faults drop): a mkdir
    # whose write was lost had allocated its cluster in memory; the unmount wrote the FAT
    # with it and cleared the dirty flag, so the lost cluster outlived the next mount.
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size={12: "4M", 16: "16M", 32: "34M"}[fat], fat=fat,
                     cluster_size=512 if fat == 32 else 2048)
    io = _LosingIO(image, fail_at)
    vol = await FatVolume.mount(io)
    with pytest.raises(TimeoutError):
        await operation(vol, io)
    assert vol.io_error is not None and vol.write_error is None
    io.armed = False
    await vol.mkdir("/after")  # the volume still serves
    await vol.unmount()
    io.close()
    vol = await FatVolume.mount(FileSectorIO(image))
    assert vol.was_dirty  # the flag stayed set: the next mount checked and repaired
    assert "after" in [f.name for f in await vol.readdir("/")]
    await vol.unmount()
    assert isinstance(vol.io, FileSectorIO)
    vol.io.close()
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()
