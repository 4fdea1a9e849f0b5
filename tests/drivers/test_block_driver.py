"""BlockDriver behaviour beyond the conformance suite: configuration errors, modes, limits."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from drivers.conformance.kit import IMAGE_BYTES, DriverCase, open_rig, page_sg
from drivers.errors import DriverConfigError, GeometryError, Lba28Limit, MediumError
from drivers.ide import LBA28_SECTORS
from drivers.nvme import NvmeDriver
from drivers.protocol import Flush, InjectFault, IoDone, Segment
from drivers.ramdisk import RamDisk
from microkernel.errors import CallTimeout
from microkernel.ipc import Router
from microkernel.memory import PAGE_SIZE, PhysicalMemory, Zone
from microkernel.protocol import Ok

pytestmark = pytest.mark.anyio


def _case(spec: str, lss: int = 512, **options: Any) -> DriverCase:
    return DriverCase(spec, lss, options, builtin=True)


@pytest.mark.parametrize(
    "options",
    [
        {"logical_sector_size": 1000},
        {"logical_sector_size": 4096, "physical_sector_size": 512},
        {"alignment_offset": 8},
        {"size": 4096 + 100},
        {"frobnicate": True},
    ],
)
def test_bad_configuration_is_typed_and_leaves_no_port(options: dict[str, Any]) -> None:
    memory = PhysicalMemory(1 << 20)
    router = Router(counters=memory.counters)
    try:
        with pytest.raises(DriverConfigError) as info:
            RamDisk("rd", router, memory, None, **{"size": 1 << 20, **options})
        assert info.value.errno == errno.EINVAL
        assert "rd" not in router.ports
        with pytest.raises(DriverConfigError):
            NvmeDriver("nv", router, memory, None)
    finally:
        memory.close()


def test_image_that_is_not_whole_sectors(tmp_path: Path) -> None:
    image = tmp_path / "odd.img"
    image.write_bytes(bytes(4096 + 7))
    memory = PhysicalMemory(1 << 20)
    try:
        with pytest.raises(GeometryError, match="whole number"):
            NvmeDriver("nv", Router(), memory, image)
    finally:
        memory.close()


async def test_read_only_refuses_writes(tmp_path: Path) -> None:
    async with open_rig(_case("nvme", read_only=True), tmp_path) as rig:
        sg = page_sg(rig.frames(1, Zone.LOW))
        await rig.read(0, sg)
        with pytest.raises(OSError) as info:
            await rig.write(0, sg)
        assert info.value.errno == errno.EROFS


async def test_alignment_offset_moves_the_physical_boundaries(tmp_path: Path) -> None:
    async with open_rig(_case("ramdisk", alignment_offset=1), tmp_path) as rig:
        assert rig.geometry.alignment_offset == 1
        frame = rig.frames(1, Zone.LOW)[0]
        await rig.write(1, [Segment(frame, PAGE_SIZE)])
        assert rig.counters().partial_sector_writes == 0
        await rig.write(8, [Segment(frame, PAGE_SIZE)])
        assert rig.counters().partial_sector_writes == 1


async def test_pio_is_limited_to_lba28(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    image.touch()
    os.truncate(image, (LBA28_SECTORS + 64) * 512)  # sparse: 128 GiB of holes
    for mode in ("pio", "dma"):
        async with open_rig(_case("ide", mode=mode), tmp_path, image=image) as rig:
            sg = page_sg(rig.frames(1, Zone.LOW))
            await rig.read(LBA28_SECTORS - 8, sg)
            if mode == "dma":
                await rig.read(LBA28_SECTORS, sg)
                continue
            with pytest.raises(Lba28Limit) as info:
                await rig.read(LBA28_SECTORS, sg)
            assert info.value.errno == errno.ERANGE


async def test_image_shrunk_underneath_gives_eio(tmp_path: Path) -> None:
    async with open_rig(_case("ahci"), tmp_path) as rig:
        os.truncate(rig.image, IMAGE_BYTES - PAGE_SIZE)
        with pytest.raises(MediumError) as info:
            await rig.read(rig.geometry.total_sectors - 8, page_sg(rig.frames(1, Zone.LOW)))
        assert info.value.errno == errno.EIO


async def test_ramdisk_without_image_and_without_write_back(tmp_path: Path) -> None:
    memory = PhysicalMemory(1 << 20)
    try:
        disk = RamDisk("rd", Router(), memory, None, size=1 << 20)
        assert disk.geometry().total_sectors == 2048
        disk.close()
    finally:
        memory.close()
    async with open_rig(_case("ramdisk"), tmp_path) as rig:
        before = rig.image.read_bytes()
        sg = page_sg(rig.frames(1, Zone.LOW))
        rig.scatter(sg, b"\x5a" * PAGE_SIZE)
        await rig.write(0, sg)
        await rig.call(Flush(), IoDone)
        assert rig.image.read_bytes() == before


async def test_faults_option_applies_from_the_start(tmp_path: Path) -> None:
    case = _case("nvme", faults=InjectFault(fail_ranges=[(0, 1)]))
    async with open_rig(case, tmp_path) as rig:
        with pytest.raises(MediumError):
            await rig.read(0, page_sg(rig.frames(1, Zone.LOW)))


@pytest.mark.parametrize("spec, options", [("nvme", {}), ("ahci", {"s64a": False}), ("ide", {})])
async def test_borrowed_frames_are_returned(
    spec: str, options: dict[str, Any], tmp_path: Path
) -> None:
    """PRP list pages and bounce frames go back to the allocator after every command."""
    async with open_rig(_case(spec, **options), tmp_path) as rig:
        sg = page_sg(rig.frames(8, Zone.HIGH))
        free = rig.memory.frames_free
        await rig.read(0, sg)
        await rig.write(0, sg)
        assert rig.memory.frames_free == free


async def test_stop_releases_a_hung_command(tmp_path: Path) -> None:
    async with open_rig(_case("ide", mode="pio"), tmp_path) as rig:
        await rig.call(InjectFault(hang=True), Ok)
        with pytest.raises(CallTimeout):
            await rig.read(0, page_sg(rig.frames(1, Zone.LOW)), timeout=0.1)
    # leaving the rig stopped the driver although a command was still hung


async def test_small_transfers_complete_inline_big_ones_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread hop costs more than a small pread: small commands do not take one."""
    import anyio.to_thread

    hops: list[int] = []
    real = anyio.to_thread.run_sync

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(sum(v.nbytes for v in args[0]) if args and isinstance(args[0], list) else -1)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    async with open_rig(_case("nvme"), tmp_path) as rig:
        small = page_sg(rig.frames(1, Zone.HIGH))
        rig.memory.view(small[0].phys)[:4] = b"data"
        await rig.write(0, small)
        rig.memory.view(small[0].phys)[:4] = b"----"
        await rig.read(0, small)
        assert bytes(rig.memory.view(small[0].phys)[:4]) == b"data"
        assert hops == []
        big = page_sg(rig.frames(32, Zone.HIGH))
        await rig.read(0, big)
        assert hops == [32 * PAGE_SIZE]
